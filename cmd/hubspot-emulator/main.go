// Command hubspot-emulator serves the hubspottest HubSpot CRM emulator on a
// fixed address, so progress-sync can run against it in staging and in the
// demo (set HUBSPOT_BASE_URL to its URL).
//
// Usage:
//
//	hubspot-emulator [-listen 127.0.0.1:8089] [-token T] [-rate-limit 100]
//	    [-daily-limit N] [-seed N] [-fault-429 F] [-fault-5xx F]
//	    [-latency D] [-contacts FILE]
//
// The token defaults to $HUBSPOT_ACCESS_TOKEN, else "test-token". FILE is a
// JSON array of {"email", "additionalEmails", "properties"}. The admin API
// lives under /_emulator (contacts, stats, violations, faults). It logs one
// line per request and stops gracefully on SIGINT or SIGTERM.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/sirupsen/logrus"

	"github.com/focusenglish/progress-sync/hubspot/hubspottest"
)

const shutdownTimeout = 10 * time.Second

type config struct {
	listen       string
	token        string
	tokenSource  string // "flag", "env" or "default"; the token itself is never logged
	rateLimit    int
	dailyLimit   int
	seed         int64
	faults       hubspottest.Faults
	contactsFile string
}

func parseFlags(args []string, getenv func(string) string, output io.Writer) (config, error) {
	var cfg config
	fs := flag.NewFlagSet("hubspot-emulator", flag.ContinueOnError)
	fs.SetOutput(output)
	fs.StringVar(&cfg.listen, "listen", "127.0.0.1:8089", "address to listen on")
	fs.StringVar(&cfg.token, "token", "test-token", "Bearer token clients must send (default: $HUBSPOT_ACCESS_TOKEN, else test-token)")
	fs.IntVar(&cfg.rateLimit, "rate-limit", 100, "requests per rolling 10 s (TEN_SECONDLY_ROLLING); 0 = unlimited")
	fs.IntVar(&cfg.dailyLimit, "daily-limit", 0, "requests per UTC day; 0 = unlimited")
	fs.Int64Var(&cfg.seed, "seed", 1, "seed for result shuffling and random faults")
	fs.Float64Var(&cfg.faults.Rate429, "fault-429", 0, "fraction of API requests answered 429 TEN_SECONDLY_ROLLING")
	fs.Float64Var(&cfg.faults.Rate5xx, "fault-5xx", 0, "fraction of API requests answered 500/502/503/504")
	fs.DurationVar(&cfg.faults.Latency, "latency", 0, "latency added to every API reply, e.g. 200ms")
	fs.StringVar(&cfg.contactsFile, "contacts", "", "JSON file with contacts to seed: [{email, additionalEmails, properties}]")
	if err := fs.Parse(args); err != nil {
		return cfg, err
	}
	if fs.NArg() > 0 {
		return cfg, fmt.Errorf("unexpected arguments: %v", fs.Args())
	}
	cfg.tokenSource = "default"
	set := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { set[f.Name] = true })
	switch {
	case set["token"]:
		cfg.tokenSource = "flag"
	case getenv("HUBSPOT_ACCESS_TOKEN") != "":
		cfg.token, cfg.tokenSource = getenv("HUBSPOT_ACCESS_TOKEN"), "env"
	}
	if cfg.token == "" {
		return cfg, errors.New("-token must not be empty")
	}
	if cfg.rateLimit < 0 || cfg.dailyLimit < 0 {
		return cfg, errors.New("-rate-limit and -daily-limit must not be negative")
	}
	if err := cfg.faults.Validate(); err != nil {
		return cfg, err
	}
	return cfg, nil
}

func loadContacts(path string) ([]hubspottest.ContactInput, error) {
	raw, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var in []hubspottest.ContactInput
	if err := json.Unmarshal(raw, &in); err != nil {
		return nil, fmt.Errorf("%s: want a JSON array of {email, additionalEmails, properties}: %w", path, err)
	}
	return in, nil
}

// newEmulator builds the emulator and seeds its contacts.
func newEmulator(cfg config, log *logrus.Entry) (*hubspottest.Server, error) {
	em := hubspottest.NewUnstartedHandler(hubspottest.Options{
		Token:      cfg.token,
		RateLimit:  cfg.rateLimit,
		DailyLimit: cfg.dailyLimit,
		Seed:       cfg.seed,
		Logger:     log,
	})
	em.SetFaults(cfg.faults)
	if cfg.contactsFile != "" {
		in, err := loadContacts(cfg.contactsFile)
		if err != nil {
			return nil, err
		}
		if _, err := em.AddContacts(in); err != nil {
			return nil, fmt.Errorf("%s: %w", cfg.contactsFile, err)
		}
		log.WithField("contacts", len(in)).Info("seeded contacts")
	}
	return em, nil
}

// serve runs h on ln until ctx is done, then shuts down gracefully.
func serve(ctx context.Context, ln net.Listener, em *hubspottest.Server, log *logrus.Entry) error {
	srv := &http.Server{Handler: em.Handler(), ReadHeaderTimeout: 10 * time.Second}
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(ln) }()
	select {
	case err := <-errc:
		return fmt.Errorf("serving: %w", err)
	case <-ctx.Done():
	}
	log.Info("shutting down")
	shutdownCtx, cancel := context.WithTimeout(context.Background(), shutdownTimeout)
	defer cancel()
	em.Close() // cuts injected latency short so in-flight requests finish
	if err := srv.Shutdown(shutdownCtx); err != nil {
		return fmt.Errorf("shutting down: %w", err)
	}
	if err := <-errc; !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	return nil
}

// run is main without the process: ready, if set, gets the bound address.
func run(ctx context.Context, args []string, getenv func(string) string, logOut io.Writer, ready func(net.Addr)) error {
	cfg, err := parseFlags(args, getenv, logOut)
	if err != nil {
		return err
	}
	logger := logrus.New()
	logger.SetOutput(logOut)
	logger.SetFormatter(&logrus.TextFormatter{FullTimestamp: true})
	log := logrus.NewEntry(logger).WithField("component", "hubspot-emulator")

	em, err := newEmulator(cfg, log)
	if err != nil {
		return err
	}
	ln, err := net.Listen("tcp", cfg.listen)
	if err != nil {
		return err
	}
	log.WithFields(logrus.Fields{
		"url":          "http://" + ln.Addr().String(),
		"admin":        "http://" + ln.Addr().String() + "/_emulator/",
		"token_source": cfg.tokenSource,
		"rate_limit":   cfg.rateLimit,
		"daily_limit":  cfg.dailyLimit,
		"seed":         cfg.seed,
		"fault_429":    cfg.faults.Rate429,
		"fault_5xx":    cfg.faults.Rate5xx,
		"latency":      cfg.faults.Latency.String(),
	}).Info("HubSpot emulator listening")
	if ready != nil {
		ready(ln.Addr())
	}
	return serve(ctx, ln, em, log)
}

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, os.Args[1:], os.Getenv, os.Stderr, nil); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			os.Exit(2)
		}
		fmt.Fprintln(os.Stderr, "hubspot-emulator:", err)
		os.Exit(1)
	}
}
