package comfysim

import (
	"encoding/json"

	"github.com/atelier-run/atelier/pkg/pyjson"
)

// ComfyUI's Python-flavoured JSON (ordered dicts, literal number spelling,
// json.dumps separators, Python reprs) lives in pkg/pyjson, shared with the
// proxy and comfyvalidate; these names keep the simulator's code short.

type (
	object  = pyjson.Object
	member  = pyjson.Member
	pyFloat = pyjson.Float
)

func pyJSON(v any) ([]byte, error)        { return pyjson.Marshal(v) }
func mustPyJSON(v any) []byte             { return pyjson.MustMarshal(v) }
func decodeJSON(data []byte) (any, error) { return pyjson.Decode(data) }
func numberFloat(n json.Number) float64   { return pyjson.NumberFloat(n) }
func pyRepr(v any) string                 { return pyjson.Repr(v) }
func pyStr(v any) string                  { return pyjson.Str(v) }
func pyStrRepr(s string) string           { return pyjson.StrRepr(s) }
func pyTypeName(v any) string             { return pyjson.TypeName(v) }
func pyTruthy(v any) bool                 { return pyjson.Truthy(v) }
