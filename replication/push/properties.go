package push

import (
	"context"
	"fmt"
	"strings"

	"github.com/focusenglish/progress-sync/hubspot"
	"github.com/focusenglish/progress-sync/metrics"
)

// Properties are the HubSpot properties the sync writes, as HubSpot defines them: the one
// mapping from the metrics' definitions (docs/contract.md §3) to HubSpot's property shape.
func Properties() []hubspot.Property {
	var props []hubspot.Property
	for _, d := range metrics.Definitions() {
		p := hubspot.Property{Name: d.Name, Label: d.Label, Description: d.Description,
			GroupName: metrics.GroupName, Type: d.Type, FieldType: d.FieldType}
		for i, o := range d.Options {
			p.Options = append(p.Options, hubspot.Option{Label: o.Label, Value: o.Value, DisplayOrder: i})
		}
		props = append(props, p)
	}
	return props
}

// Provision makes sure the property group and every property exist with the types the sync
// writes.
func Provision(ctx context.Context, hs *hubspot.Client) (hubspot.ProvisionReport, error) {
	rep, err := hs.Provision(ctx, hubspot.PropertyGroup{Name: metrics.GroupName, Label: metrics.GroupLabel}, Properties())
	if err != nil {
		return rep, fmt.Errorf("provision: %w", err)
	}
	return rep, nil
}

// CheckProperties fails when a property the sync writes is missing or of another type:
// writing then would only get every contact refused.
func CheckProperties(ctx context.Context, hs *hubspot.Client) error {
	mismatches, err := hs.CheckProperties(ctx, Properties())
	if err != nil {
		return fmt.Errorf("verify the HubSpot properties: %w", err)
	}
	if len(mismatches) == 0 {
		return nil
	}
	lines := make([]string, len(mismatches))
	for i, m := range mismatches {
		lines[i] = m.String()
	}
	return fmt.Errorf("HubSpot is not ready for the sync: %s; run `progress-sync provision` (it creates missing properties and names those of another type)",
		strings.Join(lines, "; "))
}
