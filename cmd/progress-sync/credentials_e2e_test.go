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
