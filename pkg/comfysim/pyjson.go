package comfysim

import (
	"encoding/json"

	"github.com/atelier-run/atelier/pkg/comfyvalidate"
)

// ComfyUI's Python-flavoured JSON (ordered dicts, literal number spelling,
// json.dumps separators, Python reprs) lives in pkg/comfyvalidate, shared
// with the proxy's validation; these names keep the simulator's code short.

type (
	object  = comfyvalidate.Object
	member  = comfyvalidate.Member
	pyFloat = comfyvalidate.PyFloat
)

func pyJSON(v any) ([]byte, error)        { return comfyvalidate.PyJSON(v) }
func mustPyJSON(v any) []byte             { return comfyvalidate.MustPyJSON(v) }
func decodeJSON(data []byte) (any, error) { return comfyvalidate.DecodeJSON(data) }
func numberFloat(n json.Number) float64   { return comfyvalidate.NumberFloat(n) }
func pyRepr(v any) string                 { return comfyvalidate.PyRepr(v) }
func pyStr(v any) string                  { return comfyvalidate.PyStr(v) }
func pyStrRepr(s string) string           { return comfyvalidate.PyStrRepr(s) }
func pyTypeName(v any) string             { return comfyvalidate.PyTypeName(v) }
func pyTruthy(v any) bool                 { return comfyvalidate.PyTruthy(v) }
