package comfysim

import (
	"encoding/json"
	"math/big"

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

func marshalNoEscape(v any) ([]byte, error) { return comfyvalidate.MarshalNoEscape(v) }
func pyJSON(v any) ([]byte, error)          { return comfyvalidate.PyJSON(v) }
func mustPyJSON(v any) []byte               { return comfyvalidate.MustPyJSON(v) }
func decodeJSON(data []byte) (any, error)   { return comfyvalidate.DecodeJSON(data) }
func pyFloatRepr(v float64) string          { return comfyvalidate.PyFloatRepr(v) }
func numberIsInt(n json.Number) bool        { return comfyvalidate.NumberIsInt(n) }
func numberFloat(n json.Number) float64     { return comfyvalidate.NumberFloat(n) }
func numberRat(n json.Number) *big.Rat      { return comfyvalidate.NumberRat(n) }
func pyRepr(v any) string                   { return comfyvalidate.PyRepr(v) }
func pyStr(v any) string                    { return comfyvalidate.PyStr(v) }
func pyStrRepr(s string) string             { return comfyvalidate.PyStrRepr(s) }
func pyTypeName(v any) string               { return comfyvalidate.PyTypeName(v) }
func pyTruthy(v any) bool                   { return comfyvalidate.PyTruthy(v) }
