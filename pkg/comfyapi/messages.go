package comfyapi

// WebSocket JSON message types: the "type" of a {"type", "data"} text
// frame (comfyui-api.md §3.3). The same names are the events of a history
// entry's status messages (§4).
const (
	MsgStatus               = "status"
	MsgFeatureFlags         = "feature_flags"
	MsgLogs                 = "logs"
	MsgExecutionStart       = "execution_start"
	MsgExecutionCached      = "execution_cached"
	MsgExecuting            = "executing"
	MsgProgress             = "progress"
	MsgProgressState        = "progress_state"
	MsgExecuted             = "executed"
	MsgExecutionSuccess     = "execution_success"
	MsgExecutionError       = "execution_error"
	MsgExecutionInterrupted = "execution_interrupted"
)

// ExceptionExecutionBlocked is the exception_type of the informational
// execution_error an ExecutionBlocker sends; the prompt goes on (§3.3).
const ExceptionExecutionBlocked = "ExecutionBlocked"

// Binary frame event types: the 4-byte big-endian number that starts
// every binary frame (comfyui-api.md §3.4).
const (
	BinPreviewImage             = 1
	BinUnencodedPreviewImage    = 2 // internal to ComfyUI, never on the wire
	BinText                     = 3
	BinPreviewImageWithMetadata = 4
)

// Image formats of a PREVIEW_IMAGE frame (event 1), the uint32 after the
// event type (§3.4).
const (
	ImageFormatJPEG = 1
	ImageFormatPNG  = 2
)

// FlagSupportsPreviewMetadata is the client feature flag that asks for
// previews as event 4 rather than event 1 (§3.1, §3.4).
const FlagSupportsPreviewMetadata = "supports_preview_metadata"
