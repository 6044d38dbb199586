package authority

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"time"

	"github.com/straitmesh/strait/trust/keywrap"
)

// KEKFile is where a server keeps the site's key-encryption key, which
// seals the CA and JWT keys in the replicated state. With a key service
// the file is an envelope (see keywrap.Envelope) bound to the site and
// trust domain; without one it holds the key itself (0600).
type KEKFile struct {
	// Path is the file. Required.
	Path string
	// KeyService, when set, keeps the file as an envelope under a data
	// key it issues; KeyServiceName names it in messages. Nil: plain file.
	KeyService     keywrap.KeyService
	KeyServiceName string
	// DataKeyRotation is the age at which Load re-seals the KEK under a
	// new data key; never when zero.
	DataKeyRotation time.Duration
	// Now is the clock; time.Now when nil.
	Now func() time.Time
	// Logger; slog.Default when nil.
	Logger *slog.Logger
}

func (f *KEKFile) now() time.Time {
	if f.Now == nil {
		return time.Now()
	}
	return f.Now()
}

func (f *KEKFile) log() *slog.Logger {
	if f.Logger == nil {
		return slog.Default()
	}
	return f.Logger
}

// LoadOrCreate loads the KEK file, or creates it: from raw (a joining
// server receives the site's KEK) or fresh (bootstrap, raw nil).
func (f *KEKFile) LoadOrCreate(ctx context.Context, raw []byte, site, td string) (*keywrap.FileKEK, error) {
	if k, err := f.Load(ctx, site, td); err == nil {
		if raw != nil && !bytes.Equal(k.Raw(), raw) {
			return nil, fmt.Errorf("kek_file %s holds a different key from the site's; remove it or point kek_file elsewhere", f.Path)
		}
		return k, nil
	} else if !errors.Is(err, os.ErrNotExist) {
		return nil, err
	}
	var k *keywrap.FileKEK
	var err error
	if raw != nil {
		k, err = keywrap.New(raw)
	} else {
		k, err = keywrap.Generate()
	}
	if err != nil {
		return nil, err
	}
	if ks := f.KeyService; ks != nil {
		env, err := keywrap.SealEnvelope(ctx, k, ks, f.KeyServiceName, kekContext(site, td), f.now())
		if err != nil {
			return nil, fmt.Errorf("kek_file %s: %w", f.Path, err)
		}
		return k, keywrap.WriteEnvelope(f.Path, env, false)
	}
	return k, keywrap.WriteFile(f.Path, k)
}

// kekContext binds a KEK envelope to its site.
func kekContext(site, td string) map[string]string {
	return map[string]string{"strait:site": site, "strait:trust-domain": td}
}

// Load reads the KEK file: a plain key, or with a key service an
// envelope, which it opens (and re-seals under a new data key when the
// data key is older than DataKeyRotation). An error wrapping
// os.ErrNotExist means there is no file yet.
func (f *KEKFile) Load(ctx context.Context, site, td string) (*keywrap.FileKEK, error) {
	ks := f.KeyService
	if ks == nil {
		return keywrap.LoadFile(f.Path)
	}
	env, err := keywrap.ReadEnvelope(f.Path)
	if err != nil {
		return nil, err
	}
	k, err := env.Open(ctx, ks, kekContext(site, td))
	if err != nil {
		return nil, fmt.Errorf("kek_file %s: %w (the file is unchanged)", f.Path, err)
	}
	if age := f.now().Sub(env.Created); f.DataKeyRotation > 0 && age >= f.DataKeyRotation {
		if err := f.rotateDataKey(ctx, k, site, td); err != nil {
			// The old data key still opens the KEK: keep serving, try again next start.
			f.log().Warn("data key rotation failed; the current data key stays in use", "kek_file", f.Path, "age", age.Round(time.Second), "err", err)
		}
	}
	return k, nil
}

// rotateDataKey re-seals k under a new data key, replacing the envelope
// atomically.
func (f *KEKFile) rotateDataKey(ctx context.Context, k *keywrap.FileKEK, site, td string) error {
	env, err := keywrap.SealEnvelope(ctx, k, f.KeyService, f.KeyServiceName, kekContext(site, td), f.now())
	if err != nil {
		return err
	}
	if err := keywrap.WriteEnvelope(f.Path, env, true); err != nil {
		return err
	}
	f.log().Info("data key rotated", "kek_file", f.Path, "key_id", env.KeyID)
	return nil
}
