// Package comfyapi is the vocabulary of ComfyUI's HTTP and WebSocket API
// that the proxy, the agent and the simulator share: WebSocket message
// and binary event types (comfyui-api.md §3.3, §3.4), the jobs API's query
// and statuses (§2.7) and the history entry (§4). It holds names and the
// parsing both sides must agree on, not behaviour of either.
package comfyapi
