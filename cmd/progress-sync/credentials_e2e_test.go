package main_test

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestAKeyRotatedOnDiskIsTakenWithoutARestart(t *testing.T) {
	const rotated = "svc-key-na1-rotated-0123456789"
	w := newWorld(t, 300)
	file := filepath.Join(t.TempDir(), "hubspot-token")
	if err := os.WriteFile(file, []byte(token+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	delete(w.cli.env, "HUBSPOT_ACCESS_TOKEN")
	w.cli.env["HUBSPOT_ACCESS_TOKEN_FILE"] = file
	w.streamEnv(nil)
	svc := w.start()
	w.waitEqual(time.Minute)

	// HubSpot takes the new key only; the file still holds the old one for a while, and
	// students keep changing meanwhile.
	w.emu.SetToken(rotated)
	w.touchXP(0, 50, 7)
	svc.waitLog("HTTP 401 INVALID_AUTHENTICATION", 30*time.Second)
	if len(w.diff()) == 0 {
		t.Fatal("the changes reached HubSpot with a revoked key")
	}
	if err := os.WriteFile(file, []byte(rotated+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	w.touchXP(50, 100, 3)
	w.waitEqual(2 * time.Minute)
	svc.waitLog("read a new one and sending again", 10*time.Second)
	if strings.Contains(svc.logs.String(), rotated) {
		t.Fatal("the service logged the new key")
	}
	svc.mustStop()
}

func TestCheckNamesAMissingScopeAndChangesNothing(t *testing.T) {
	w := newWorld(t, 300)
	w.cli.mustRun("setup")
	w.cli.mustRun("provision")
	all := []string{"crm.objects.contacts.read", "crm.objects.contacts.write", "crm.schemas.contacts.read", "crm.schemas.contacts.write"}
	before := w.emu.Contacts()
	out := w.cli.mustRun("check").stdout
	for _, scope := range all {
		if !strings.Contains(out, "ok       HubSpot access: ") || !strings.Contains(out, "("+scope+"): allowed") {
			t.Fatalf("check with every scope does not show %s allowed:\n%s", scope, out)
		}
	}
	for _, missing := range all {
		t.Run(missing, func(t *testing.T) {
			var granted []string
			for _, s := range all {
				if s != missing {
					granted = append(granted, s)
				}
			}
			w.emu.SetScopes(granted...)
			r := w.cli.run("check")
			if r.code != 1 || !strings.Contains(r.stdout, "PROBLEM  HubSpot access: ") || !strings.Contains(r.stdout, "("+missing+"): HubSpot refuses it (403)") ||
				!strings.Contains(r.stdout, "add the scope "+missing+" to the service key") {
				t.Fatalf("exit %d\n%s", r.code, r.stdout)
			}
			// One scope refused; what could not be told without it is not passed as ok either.
			if n := strings.Count(r.stdout, "HubSpot refuses it (403)"); n != 1 {
				t.Fatalf("%d refused scopes, want the one:\n%s", n, r.stdout)
			}
		})
	}
	if !sameContacts(before, w.emu.Contacts()) || len(w.emu.Violations()) > 0 {
		t.Fatalf("check changed contacts or broke HubSpot's contract: %v", w.emu.Violations())
	}
}

func TestAnAPIVersionHubSpotDoesNotServeIsAClearStop(t *testing.T) {
	w := newWorld(t, 300)
	w.cli.env["HUBSPOT_API_VERSION"] = "2031-01" // well formed, but not served
	w.emu.ResetStats()
	for _, command := range []string{"provision", "backfill", "run"} {
		r := w.cli.run(command)
		if r.code != 2 || !strings.Contains(r.stderr, "HubSpot does not serve this API version 2031-01") || !strings.Contains(r.stderr, "set HUBSPOT_API_VERSION") {
			t.Fatalf("%s: exit %d\n%s", command, r.code, tail(r.stderr, 2000))
		}
	}
	r := w.cli.run("check")
	if r.code != 1 || !strings.Contains(r.stdout, "PROBLEM  HubSpot API version") || strings.Contains(r.stdout, "create a service key") {
		t.Fatalf("check: exit %d\n%s", r.code, r.stdout)
	}
	w.emu.ResetStats() // the requests went to a family the cleanup would not expect
}
