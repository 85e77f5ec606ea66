// Package comfysim is a faithful simulator of a ComfyUI server (baseline
// 0.3.64, see comfyui-api.md): the HTTP routes at /X and /api/X, the
// WebSocket with ComfyUI's exact message order and targeting, the prompt
// queue with its priority numbers, validation errors, history entries,
// output caching, uploads and /view.
//
// It is both the test double for every Atelier test and the "GPU" of the
// demo, so it must not be special-cased by clients: anything that works
// against it must work against a real ComfyUI. Model-free image nodes
// (EmptyImage, LoadImage, ImageInvert, ImageBlur, ImageScale, ImageScaleBy,
// SaveImage, PreviewImage) do real image processing and write real PNG
// files; the string nodes (PrimitiveString, PrimitiveStringMultiline,
// StringConcatenate) compute texts, such as a filename_prefix; model nodes (CheckpointLoaderSimple, CLIPTextEncode,
// EmptyLatentImage, KSampler, VAEDecode) take simulated time and report
// sampler progress, and VAEDecode draws a deterministic picture derived
// from the seed.
//
// Fault injection (SetFault, or POST /sim/fault from another process)
// reproduces the ways a real GPU worker fails: slow start, hangs, crashes,
// node exceptions and CUDA out-of-memory.
//
// Deliberate differences from ComfyUI are limited to what would be unsafe:
// paths given to LoadImage may not leave their directory, and /view does
// not re-encode images over comfyview.MaxPixels (a decompression bomb).
package comfysim
