package main

import (
	"fmt"
	"io"

	"github.com/spf13/cobra"

	"github.com/focusenglish/progress-sync/replication/config"
	"github.com/focusenglish/progress-sync/replication/preflight"
)

func (a *app) checkCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "check",
		Short: "Preflight: database, replication settings, publication, slot, HubSpot token and properties",
		Long: `Check everything run needs and print each item as ok, or the problem and its fix.
Exit status 0 only when every item is ok.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx, out := cmd.Context(), cmd.OutOrStdout()
			cfg, log, db, err := a.openDatabase(ctx, config.Needs{Replication: true, HubSpot: true, SkipModel: true})
			if err != nil {
				return err
			}
			defer db.Close()
			findings := preflight.Database(ctx, db, cfg)
			hs, err := a.newHubSpot(cfg, log)
			if err != nil {
				return err
			}
			findings = append(findings, preflight.HubSpot(ctx, hs)...)
			return printFindings(out, findings)
		},
	}
}

// printFindings prints each item: ok, or the problem and its fix.
func printFindings(out io.Writer, findings []preflight.Finding) error {
	problems := 0
	for _, f := range findings {
		if f.OK {
			fmt.Fprintf(out, "ok       %s: %s\n", f.Item, f.Detail)
			continue
		}
		problems++
		fmt.Fprintf(out, "PROBLEM  %s: %s\n         fix: %s\n", f.Item, f.Detail, f.Fix)
	}
	if problems > 0 {
		return fmt.Errorf("check: %d of %d items need attention", problems, len(findings))
	}
	fmt.Fprintf(out, "check: all %d items ok\n", len(findings))
	return nil
}
