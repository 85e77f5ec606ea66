package broker

import (
	"github.com/atelier-run/atelier/internal/testutil"
	"testing"
	"time"

	"github.com/atelier-run/atelier/pkg/datalayout"
	"github.com/atelier-run/atelier/pkg/registry"
	"github.com/stretchr/testify/require"
	"golang.org/x/crypto/bcrypt"
)

// A participant's own running cap (the registry's quotas.max_running)
// overrides the broker's default, counts across pools, and an edit of the
// registry takes effect without a restart.
func TestUsersOwnRunningCapAcrossPools(t *testing.T) {
	t.Parallel()
	tb := setupWithSignals(t, func(c *Config) {
		c.MaxRunningPerUser = 2
		c.TicketCheckInterval = 100 * time.Millisecond
	}, withHousekeeping)
	reg, err := registry.Open(registry.Config{Path: datalayout.New(tb.dir).RegistryPath(), BcryptCost: bcrypt.MinCost})
	require.NoError(t, err)
	_, err = reg.Create(tb.ctx, registry.User{ID: "user001", Quotas: &registry.Quotas{MaxRunning: 1}}, "pw-user001")
	require.NoError(t, err)
	_, err = reg.Create(tb.ctx, registry.User{ID: "user002"}, "pw-user002")
	require.NoError(t, err)

	tb.heartbeatIn(t, "big1", "boot", "big", 2)
	tb.heartbeatIn(t, "small1", "boot", "small", 2)
	tb.heartbeatIn(t, "solo1", "boot", "solo", 3)
	for range 2 {
		tb.submitTo(t, "user001", "big")
		tb.submitTo(t, "user001", "small")
	}
	for range 3 {
		tb.submitTo(t, "user002", "solo")
	}
	inFlight := func(user string) int {
		st, err := tb.broker.Status(tb.ctx)
		require.NoError(t, err)
		return st.Users[user].Running
	}
	queued := func(user string) int {
		st, err := tb.broker.Status(tb.ctx)
		require.NoError(t, err)
		return st.Users[user].Queued
	}
	// Taken in and dispatched up to the caps (a dispatch round may come
	// after the intake: waiting for it is not left to the rounds below).
	testutil.Eventually(t, func() bool {
		return queued("user001")+inFlight("user001") == 4 && inFlight("user001") == 1 && inFlight("user002") == 2
	}, "the jobs are not taken in and dispatched up to the caps")
	// A few dispatch rounds (heartbeats, housekeeping) change nothing.
	for range 3 {
		tb.heartbeatIn(t, "big1", "boot", "big", 2)
		tb.heartbeatIn(t, "small1", "boot", "small", 2)
		tb.heartbeatIn(t, "solo1", "boot", "solo", 3)
		tb.awaitHousekeeping(t)
	}
	require.Equal(t, 1, inFlight("user001"), "user001's own cap: one slot across both pools")
	require.Equal(t, 2, inFlight("user002"), "user002 has the default cap")

	// The instructor raises user001's cap in the registry.
	_, err = reg.Update(tb.ctx, "user001", func(u *registry.User) error {
		u.Quotas.MaxRunning = 3
		return nil
	})
	require.NoError(t, err)
	testutil.Eventually(t, func() bool { return inFlight("user001") == 3 }, "user001 runs 3 after its cap was raised")
	require.Equal(t, 1, queued("user001"))
}
