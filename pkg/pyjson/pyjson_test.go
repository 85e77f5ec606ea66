package pyjson

import (
	"encoding/json"
	"testing"
)

func TestDecodeKeepsOrderAndSpellingMarshalIsJSONDumps(t *testing.T) {
	in := `{"z":1,"a":[7.0,20,1e-05,"é😀"],"m":{"b":null,"a":true}}`
	v, err := Decode([]byte(in))
	if err != nil {
		t.Fatal(err)
	}
	o, ok := v.(Object)
	if !ok || len(o.Keys()) != 3 || o.Keys()[0] != "z" || o.Keys()[1] != "a" {
		t.Fatalf("decoded %#v: want an Object with keys z, a, m in order", v)
	}
	got := string(MustMarshal(v))
	want := `{"z": 1, "a": [7.0, 20, 1e-05, "\u00e9\ud83d\ude00"], "m": {"b": null, "a": true}}`
	if got != want {
		t.Errorf("Marshal:\n got %s\nwant %s", got, want)
	}
}

func TestMarshalNoEscapeLeavesHTML(t *testing.T) {
	b, err := MarshalNoEscape("<a&b>")
	if err != nil || string(b) != `"<a&b>"` {
		t.Errorf("got %s, %v", b, err)
	}
}

func TestObjectSetDel(t *testing.T) {
	var o Object
	o.Set("a", 1)
	o.Set("b", 2)
	o.Set("a", 3)
	o.Del("b")
	if v, _ := o.Get("a"); v != 3 || o.Has("b") || len(o) != 1 {
		t.Errorf("got %#v", o)
	}
	if s, ok := (Object{{"k", "v"}, {"n", 1}}).Str("k"); !ok || s != "v" {
		t.Errorf("Str(k) = %q, %v", s, ok)
	}
	if _, ok := (Object{{"n", 1}}).Str("n"); ok {
		t.Error("Str of a number is not a string")
	}
}

func TestFloatRepr(t *testing.T) {
	for v, want := range map[float64]string{
		5: "5.0", 0.1: "0.1", 1e-5: "1e-05", 1e16: "1e+16", 123456789012345.6: "123456789012345.6", -0.0001: "-0.0001",
	} {
		if got := FloatRepr(v); got != want {
			t.Errorf("FloatRepr(%v) = %s, want %s", v, got, want)
		}
	}
	if b, err := json.Marshal(Float(2)); err != nil || string(b) != "2.0" {
		t.Errorf("Float(2) encodes as %s, %v", b, err)
	}
}

func TestReprStrTypeNameTruthy(t *testing.T) {
	v, err := Decode([]byte(`[null, true, "it's", "say \"hi\"", 3, 2.50, {"k": []}]`))
	if err != nil {
		t.Fatal(err)
	}
	if got, want := Repr(v), `[None, True, "it's", 'say "hi"', 3, 2.5, {'k': []}]`; got != want {
		t.Errorf("Repr:\n got %s\nwant %s", got, want)
	}
	if got := Str("plain"); got != "plain" {
		t.Errorf("Str of a string is the string, got %s", got)
	}
	if got := StrRepr("a'b\"c\n"); got != `'a\'b"c\n'` {
		t.Errorf("StrRepr = %s", got)
	}
	items := v.([]any)
	names := []string{"NoneType", "bool", "str", "str", "int", "float", "dict"}
	truthy := []bool{false, true, true, true, true, true, true}
	for i, it := range items {
		if got := TypeName(it); got != names[i] {
			t.Errorf("TypeName(%v) = %s, want %s", it, got, names[i])
		}
		if got := Truthy(it); got != truthy[i] {
			t.Errorf("Truthy(%v) = %v, want %v", it, got, truthy[i])
		}
	}
	if Truthy(json.Number("0.0")) || Truthy("") || Truthy([]any{}) || Truthy(Object{}) {
		t.Error("zero, empty string, empty list and empty dict are falsy")
	}
}
