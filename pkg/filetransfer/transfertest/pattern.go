// Package transfertest holds helpers for tests and benchmarks of large file
// transfers: deterministic content of any size that needs neither memory nor
// disk to produce, and process memory measurements.
package transfertest

import (
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
)

// blockSize is the unit of Pattern's content: one random block, varied per
// block index so no two blocks of a file are equal.
const blockSize = 1 << 20

// Pattern is deterministic pseudo-random content of Size bytes, readable at
// any offset without producing what comes before it. Two Patterns with the
// same Seed and Size have the same bytes; a misplaced or repeated chunk
// changes the sha256.
type Pattern struct {
	Seed uint64
	Size int64
	base []byte
}

var _ io.ReaderAt = (*Pattern)(nil)

// NewPattern returns the content for seed and size.
func NewPattern(seed uint64, size int64) *Pattern {
	base := make([]byte, blockSize)
	r := rand.NewChaCha8([32]byte{byte(seed), byte(seed >> 8), byte(seed >> 16), byte(seed >> 24), byte(seed >> 32), 0xa7})
	_, _ = r.Read(base)
	return &Pattern{Seed: seed, Size: size, base: base}
}

// ReadAt implements io.ReaderAt.
func (p *Pattern) ReadAt(b []byte, off int64) (int, error) {
	if off < 0 {
		return 0, fmt.Errorf("transfertest: negative offset %d", off)
	}
	if off >= p.Size {
		return 0, io.EOF
	}
	n := 0
	for n < len(b) && off < p.Size {
		blk := off / blockSize
		in := int(off % blockSize)
		m := min(len(b)-n, blockSize-in, int(p.Size-off))
		p.fill(b[n:n+m], blk, in)
		n += m
		off += int64(m)
	}
	if n < len(b) {
		return n, io.EOF
	}
	return n, nil
}

// fill writes block blk's bytes [in, in+len(dst)) to dst: the base block
// XORed with a word derived from the block index (eight bytes at a time).
func (p *Pattern) fill(dst []byte, blk int64, in int) {
	var key [8]byte
	binary.LittleEndian.PutUint64(key[:], uint64(blk+1)*0x9e3779b97f4a7c15^p.Seed)
	src := p.base[in : in+len(dst)]
	i := 0
	// Align to the key's phase, then go word by word.
	for ; i < len(dst) && (in+i)%8 != 0; i++ {
		dst[i] = src[i] ^ key[(in+i)%8]
	}
	k := binary.LittleEndian.Uint64(key[:])
	for ; i+8 <= len(dst); i += 8 {
		binary.LittleEndian.PutUint64(dst[i:], binary.LittleEndian.Uint64(src[i:])^k)
	}
	for ; i < len(dst); i++ {
		dst[i] = src[i] ^ key[(in+i)%8]
	}
}

// Reader returns the content as an io.Reader.
func (p *Pattern) Reader() io.Reader { return io.NewSectionReader(p, 0, p.Size) }

// SHA256 hashes the content (about 2 s per GiB with SHA-NI).
func (p *Pattern) SHA256() string {
	h := sha256.New()
	_, _ = io.CopyBuffer(h, p.Reader(), make([]byte, 4<<20))
	return hex.EncodeToString(h.Sum(nil))
}

// WriteFile writes the content to path.
func (p *Pattern) WriteFile(path string) error {
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	if _, err := io.CopyBuffer(f, p.Reader(), make([]byte, 4<<20)); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}
