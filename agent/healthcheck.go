package main

import (
	"fmt"
	"net/http"
	"time"

	"github.com/spf13/cobra"
)

// healthcheckTimeout bounds the health check's request.
const healthcheckTimeout = 5 * time.Second

// newHealthcheck is `atelier-agent healthcheck`: a container health check
// for images without curl (the simulator's FROM scratch image): GET the
// URL, exit 0 on 200.
func newHealthcheck() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "healthcheck [--url URL]",
		Short: "Exit 0 when the URL answers 200 (a container health check)",
	}
	url := cmd.Flags().String("url", "http://127.0.0.1:8188/system_stats", "URL that answers 200 when healthy")
	cmd.RunE = func(*cobra.Command, []string) error {
		c := &http.Client{Timeout: healthcheckTimeout}
		resp, err := c.Get(*url)
		if err != nil {
			return fmt.Errorf("unhealthy: %w", err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			return fmt.Errorf("unhealthy: %s", resp.Status)
		}
		return nil
	}
	return cmd
}
