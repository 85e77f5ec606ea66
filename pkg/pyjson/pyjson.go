// Package pyjson is JSON as ComfyUI, a Python program, writes and reads
// it: insertion-ordered objects, numbers that keep their spelling,
// json.dumps's separators and ASCII escaping, and Python's repr, str,
// type names and truthiness for the texts of its error messages.
package pyjson

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"math/big"
	"strconv"
	"strings"
	"unicode/utf8"
)

// ComfyUI is a Python program: its JSON comes from json.dumps with default
// settings, its dicts keep insertion order, and its error strings are built
// from Python reprs. Clients (and the proxy's tests) see all of that, so the
// simulator models it instead of using Go's defaults: objects are ordered
// slices, numbers keep their literal spelling (json.Number) so that 7.0 stays
// 7.0 and 20 stays 20, and the encoder emits Python's ", " / ": " separators
// with non-ASCII escaped (ensure_ascii=True).

// Object is an insertion-ordered JSON Object, the Go stand-in for a Python dict.
type Object []Member

// Member is one key and value of an Object. It is an alias of an unnamed
// struct so that packages building Objects may use short unkeyed literals.
type Member = struct {
	Key   string
	Value any
}

// Get returns the value stored under key.
func (o Object) Get(key string) (any, bool) {
	for _, m := range o {
		if m.Key == key {
			return m.Value, true
		}
	}
	return nil, false
}

// Has reports whether key is present.
func (o Object) Has(key string) bool {
	_, ok := o.Get(key)
	return ok
}

// Str returns the value under key when it is a string.
func (o Object) Str(key string) (string, bool) {
	v, ok := o.Get(key)
	if !ok {
		return "", false
	}
	s, ok := v.(string)
	return s, ok
}

// Set replaces the value of key in place (keeping its position, as a Python
// dict does) or appends it.
func (o *Object) Set(key string, v any) {
	for i := range *o {
		if (*o)[i].Key == key {
			(*o)[i].Value = v
			return
		}
	}
	*o = append(*o, Member{key, v})
}

// Del removes key if present.
func (o *Object) Del(key string) {
	for i := range *o {
		if (*o)[i].Key == key {
			*o = append((*o)[:i], (*o)[i+1:]...)
			return
		}
	}
}

// Keys lists the keys in order.
func (o Object) Keys() []string {
	out := make([]string, len(o))
	for i, m := range o {
		out[i] = m.Key
	}
	return out
}

// MarshalJSON writes the members in order.
func (o Object) MarshalJSON() ([]byte, error) {
	if o == nil {
		return []byte("{}"), nil
	}
	var buf bytes.Buffer
	buf.WriteByte('{')
	for i, m := range o {
		if i > 0 {
			buf.WriteByte(',')
		}
		k, err := MarshalNoEscape(m.Key)
		if err != nil {
			return nil, err
		}
		buf.Write(k)
		buf.WriteByte(':')
		v, err := MarshalNoEscape(m.Value)
		if err != nil {
			return nil, fmt.Errorf("key %q: %w", m.Key, err)
		}
		buf.Write(v)
	}
	buf.WriteByte('}')
	return buf.Bytes(), nil
}

// MarshalNoEscape is json.Marshal without HTML escaping (Python does not
// escape <, > and &).
func MarshalNoEscape(v any) ([]byte, error) {
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(v); err != nil {
		return nil, err
	}
	return bytes.TrimRight(buf.Bytes(), "\n"), nil
}

// Marshal encodes v the way Python's json.dumps(v) would.
func Marshal(v any) ([]byte, error) {
	compact, err := MarshalNoEscape(v)
	if err != nil {
		return nil, err
	}
	return Pythonize(compact), nil
}

// MustMarshal is Marshal for values built by the simulator itself, which always
// encode.
func MustMarshal(v any) []byte {
	b, err := Marshal(v)
	if err != nil {
		panic(fmt.Sprintf("comfyvalidate: encoding internal value: %v", err))
	}
	return b
}

// Pythonize rewrites compact JSON into json.dumps' default layout: a space
// after every ',' and ':' outside strings, and non-ASCII characters escaped.
func Pythonize(compact []byte) []byte {
	out := make([]byte, 0, len(compact)+len(compact)/8)
	inString := false
	for i := 0; i < len(compact); {
		c := compact[i]
		if inString {
			switch {
			case c == '\\':
				out = append(out, c, compact[i+1])
				i += 2
				continue
			case c == '"':
				inString = false
			case c >= utf8.RuneSelf:
				r, size := utf8.DecodeRune(compact[i:])
				if r >= 0x10000 {
					r1, r2 := surrogates(r)
					out = fmt.Appendf(out, `\u%04x\u%04x`, r1, r2)
				} else {
					out = fmt.Appendf(out, `\u%04x`, r)
				}
				i += size
				continue
			}
			out = append(out, c)
			i++
			continue
		}
		switch c {
		case '"':
			inString = true
			out = append(out, c)
		case ',', ':':
			out = append(out, c, ' ')
		default:
			out = append(out, c)
		}
		i++
	}
	return out
}

func surrogates(r rune) (rune, rune) {
	r -= 0x10000
	return 0xd800 + (r>>10)&0x3ff, 0xdc00 + r&0x3ff
}

// Decode decodes a JSON document into ordered values: Object, []any,
// string, json.Number, bool and nil. Trailing data is an error, as in
// Python's json.loads.
func Decode(data []byte) (any, error) {
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.UseNumber()
	v, err := decodeValue(dec)
	if err != nil {
		return nil, err
	}
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		return nil, errors.New("extra data after JSON value")
	}
	return v, nil
}

func decodeValue(dec *json.Decoder) (any, error) {
	tok, err := dec.Token()
	if err != nil {
		return nil, err
	}
	switch t := tok.(type) {
	case json.Delim:
		switch t {
		case '{':
			o := Object{}
			for dec.More() {
				kt, err := dec.Token()
				if err != nil {
					return nil, err
				}
				k, _ := kt.(string)
				v, err := decodeValue(dec)
				if err != nil {
					return nil, err
				}
				// Python keeps the last duplicate key at the first position.
				o.Set(k, v)
			}
			if _, err := dec.Token(); err != nil {
				return nil, err
			}
			return o, nil
		case '[':
			arr := []any{}
			for dec.More() {
				v, err := decodeValue(dec)
				if err != nil {
					return nil, err
				}
				arr = append(arr, v)
			}
			if _, err := dec.Token(); err != nil {
				return nil, err
			}
			return arr, nil
		}
		return nil, fmt.Errorf("unexpected delimiter %v", t)
	default:
		return tok, nil
	}
}

// Float is a float64 that encodes like Python's float repr (5.0, not 5).
type Float float64

func (f Float) MarshalJSON() ([]byte, error) {
	v := float64(f)
	if math.IsNaN(v) || math.IsInf(v, 0) {
		return nil, fmt.Errorf("non-finite float %v", v)
	}
	return []byte(FloatRepr(v)), nil
}

// FloatRepr formats v as Python's repr(float) does: shortest round-trip
// digits, exponent form below 1e-4 and from 1e16, and always a '.' or 'e'.
func FloatRepr(v float64) string {
	switch {
	case math.IsNaN(v):
		return "nan"
	case math.IsInf(v, 1):
		return "inf"
	case math.IsInf(v, -1):
		return "-inf"
	}
	a := math.Abs(v)
	if a != 0 && (a < 1e-4 || a >= 1e16) {
		// Go spells exponents like Python (1e+16, 1.5e-05).
		return strconv.FormatFloat(v, 'e', -1, 64)
	}
	s := strconv.FormatFloat(v, 'f', -1, 64)
	if !strings.ContainsAny(s, ".e") {
		s += ".0"
	}
	return s
}

// NumberIsInt reports whether a JSON number literal is an integer literal
// (which Python's json module turns into an int).
func NumberIsInt(n json.Number) bool {
	return !strings.ContainsAny(string(n), ".eE")
}

// NumberFloat parses a JSON number as float64.
func NumberFloat(n json.Number) float64 {
	f, err := strconv.ParseFloat(string(n), 64)
	if err != nil {
		// Integers beyond float range still parse; anything else is a
		// literal the decoder accepted, so this is effectively unreachable.
		return math.NaN()
	}
	return f
}

// NumberRat parses a JSON number exactly, for Python-exact comparisons of
// huge integers such as KSampler's seed maximum 0xffffffffffffffff.
func NumberRat(n json.Number) *big.Rat {
	r, ok := new(big.Rat).SetString(string(n))
	if !ok {
		return new(big.Rat)
	}
	return r
}

// Repr renders a decoded JSON value as Python's repr() would.
func Repr(v any) string {
	switch t := v.(type) {
	case nil:
		return "None"
	case bool:
		if t {
			return "True"
		}
		return "False"
	case string:
		return StrRepr(t)
	case json.Number:
		if NumberIsInt(t) {
			return string(t)
		}
		return FloatRepr(NumberFloat(t))
	case Float:
		return FloatRepr(float64(t))
	case int:
		return strconv.Itoa(t)
	case int64:
		return strconv.FormatInt(t, 10)
	case float64:
		return FloatRepr(t)
	case []string:
		parts := make([]string, len(t))
		for i, s := range t {
			parts[i] = StrRepr(s)
		}
		return "[" + strings.Join(parts, ", ") + "]"
	case []any:
		parts := make([]string, len(t))
		for i, e := range t {
			parts[i] = Repr(e)
		}
		return "[" + strings.Join(parts, ", ") + "]"
	case Object:
		parts := make([]string, len(t))
		for i, m := range t {
			parts[i] = StrRepr(m.Key) + ": " + Repr(m.Value)
		}
		return "{" + strings.Join(parts, ", ") + "}"
	default:
		return fmt.Sprint(v)
	}
}

// Str renders a value as Python's str() would.
func Str(v any) string {
	if s, ok := v.(string); ok {
		return s
	}
	return Repr(v)
}

// StrRepr is repr(str): single quotes unless the text contains a single
// quote and no double quote.
func StrRepr(s string) string {
	quote := byte('\'')
	if strings.Contains(s, "'") && !strings.Contains(s, `"`) {
		quote = '"'
	}
	var b strings.Builder
	b.WriteByte(quote)
	for _, r := range s {
		switch {
		case r == rune(quote) || r == '\\':
			b.WriteByte('\\')
			b.WriteRune(r)
		case r == '\n':
			b.WriteString(`\n`)
		case r == '\r':
			b.WriteString(`\r`)
		case r == '\t':
			b.WriteString(`\t`)
		case r < 0x20 || r == 0x7f:
			fmt.Fprintf(&b, `\x%02x`, r)
		default:
			b.WriteRune(r)
		}
	}
	b.WriteByte(quote)
	return b.String()
}

// TypeName is type(v).__name__ for a decoded JSON value.
func TypeName(v any) string {
	switch t := v.(type) {
	case nil:
		return "NoneType"
	case bool:
		return "bool"
	case string:
		return "str"
	case json.Number:
		if NumberIsInt(t) {
			return "int"
		}
		return "float"
	case []any:
		return "list"
	case Object:
		return "dict"
	default:
		return fmt.Sprintf("%T", v)
	}
}

// Truthy is Python's bool(v) for a decoded JSON value.
func Truthy(v any) bool {
	switch t := v.(type) {
	case nil:
		return false
	case bool:
		return t
	case string:
		return t != ""
	case json.Number:
		return NumberFloat(t) != 0
	case []any:
		return len(t) > 0
	case Object:
		return len(t) > 0
	default:
		return true
	}
}
