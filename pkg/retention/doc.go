// Package retention bounds mello's disk: a Janitor deletes participants'
// outputs and temp files (and, when configured, inputs) older than a TTL;
// Usage reports bytes per participant and kind; Quotas refuses new files
// that would take a participant over their limit.
//
// Everything works through filestore.Walker, so it applies to the Disk
// store and to an S3 bucket alike.
package retention
