# Shortcuts; each target is one command you can also run by hand.
.PHONY: demo test chaos chaos-handover chaos-operator chaos-short fuzz

demo:
	go run ./cmd/demo

test:
	go test -race ./... && (cd deploy && go test -race ./...)

# The soak under fire (about 5 minutes); its summary goes in the README.
chaos:
	go run ./cmd/chaos

# The handover and operator-action soaks (about 5 minutes each).
chaos-handover:
	go run ./cmd/chaos --mode handover

chaos-operator:
	go run ./cmd/chaos --mode operator

# The short variants CI runs.
chaos-short:
	go run ./cmd/chaos --duration 45s --students 1000
	go run ./cmd/chaos --mode handover --duration 45s --students 1000
	go run ./cmd/chaos --mode operator --duration 45s --students 1000

# A minute of each fuzz target.
fuzz:
	go test -run '^$$' -fuzz '^FuzzDecode$$' -fuzztime 60s ./replication/
	go test -run '^$$' -fuzz '^FuzzLoad$$' -fuzztime 60s ./replication/config/
