package state

import "errors"

// Errors returned by Apply. They mean the command was rejected and changed
// nothing.
var (
	// ErrNotFound: the service, instance or token does not exist.
	ErrNotFound = errors.New("not found")
	// ErrConflict: the command contradicts the current state.
	ErrConflict = errors.New("conflict")
	// ErrTokenInvalid: the token is unknown, expired or used up.
	ErrTokenInvalid = errors.New("token invalid")
	// ErrMalformed: the command lacks a required part. The API validates
	// requests before proposing them, so this means a bug or corruption.
	ErrMalformed = errors.New("malformed command")
	// ErrFormat: the command is in a format newer than this server
	// understands. The store then stops applying the log (see Halted).
	ErrFormat = errors.New("command format newer than this server understands")
	// ErrNotBootstrapped: the site has no identity yet.
	ErrNotBootstrapped = errors.New("site not bootstrapped")
)
