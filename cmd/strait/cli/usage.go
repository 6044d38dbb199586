package cli

import (
	"errors"
	"fmt"
	"slices"
	"strings"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
)

// Bad usage exits 2 and says what would have been right. Cobra, left alone,
// prints a group's help and exits 0 for a mistyped subcommand
// (`strait federation delet`), and exits 1 for a wrong number of arguments;
// strictUsage fixes both on the whole tree once it is built.

// strictUsage walks the command tree: a command that only groups others
// refuses an unknown subcommand with suggestions, and every argument-count
// error becomes a usage error.
func strictUsage(c *cobra.Command) {
	for _, sub := range c.Commands() {
		strictUsage(sub)
	}
	if c.HasSubCommands() && !c.Runnable() {
		c.Args = cobra.ArbitraryArgs
		c.RunE = func(cmd *cobra.Command, args []string) error {
			if len(args) == 0 {
				return cmd.Help()
			}
			return unknownCommand(cmd, args[0])
		}
		return
	}
	check := c.Args
	if check == nil {
		check = cobra.ArbitraryArgs
	}
	c.Args = func(cmd *cobra.Command, args []string) error {
		if len(args) > 0 && cmd.HasSubCommands() {
			// A command that runs and has subcommands (agent, gateway,
			// export): a word that is near a subcommand is a typo of it.
			if s := suggestCommands(cmd, args[0]); len(s) > 0 {
				return unknownCommand(cmd, args[0])
			}
		}
		if err := check(cmd, args); err != nil {
			return usageError{fmt.Errorf("%s: %w (usage: %s)", cmd.CommandPath(), err, cmd.UseLine())}
		}
		return nil
	}
}

// unknownCommand is the usage error for a word that names no subcommand of
// cmd: the closest names, or else the list of them.
func unknownCommand(cmd *cobra.Command, word string) error {
	var b strings.Builder
	fmt.Fprintf(&b, "unknown command %q for %q", word, cmd.CommandPath())
	if s := suggestCommands(cmd, word); len(s) > 0 {
		fmt.Fprintf(&b, "; did you mean %s?", orList(prefixed(cmd.CommandPath()+" ", s)))
	} else {
		var names []string
		for _, sub := range cmd.Commands() {
			if sub.IsAvailableCommand() {
				names = append(names, sub.Name())
			}
		}
		fmt.Fprintf(&b, "; its commands are %s", strings.Join(names, ", "))
	}
	return usageError{errors.New(b.String())}
}

// suggestCommands are the subcommands of cmd that word is probably a typo
// of: within two edits of their name or an alias, or a prefix of the name.
func suggestCommands(cmd *cobra.Command, word string) []string {
	var out []string
	for _, sub := range cmd.Commands() {
		if !sub.IsAvailableCommand() {
			continue
		}
		near := strings.HasPrefix(sub.Name(), word) || slices.Contains(sub.SuggestFor, word)
		for _, n := range append([]string{sub.Name()}, sub.Aliases...) {
			near = near || editDistance(word, n) <= 2
		}
		if near {
			out = append(out, sub.Name())
		}
	}
	return out
}

// flagError turns a flag parsing error into a usage error that names the
// closest flag the command has.
func flagError(cmd *cobra.Command, err error) error {
	name, ok := strings.CutPrefix(err.Error(), "unknown flag: --")
	if !ok {
		return usageError{err}
	}
	name, _, _ = strings.Cut(name, "=")
	if s := closestFlags(cmd, name); len(s) > 0 {
		return usageError{fmt.Errorf("%s: unknown flag --%s; did you mean %s?", cmd.CommandPath(), name, orList(prefixed("--", s)))}
	}
	return usageError{fmt.Errorf("%s: unknown flag --%s (see %s --help)", cmd.CommandPath(), name, cmd.CommandPath())}
}

// flagSynonyms are words people type for a flag that is spelled otherwise.
var flagSynonyms = map[string][]string{
	"namespace": {"ns"},
	"service":   {"svc"},
	"name":      {"svc"},
	"server":    {"addr"},
	"address":   {"addr"},
	"ca":        {"ca-file"},
	"output":    {"json"},
	"node":      {"node-name"},
}

// closestFlags are the visible flags of cmd near name: within two edits, a
// prefix of it, or a known synonym.
func closestFlags(cmd *cobra.Command, name string) []string {
	var out []string
	seen := map[string]bool{}
	add := func(f *pflag.Flag) {
		if f.Hidden || seen[f.Name] {
			return
		}
		syn := slices.Contains(flagSynonyms[name], f.Name)
		if syn || editDistance(name, f.Name) <= 2 || (len(name) >= 2 && strings.HasPrefix(f.Name, name)) {
			seen[f.Name] = true
			out = append(out, f.Name)
		}
	}
	cmd.LocalFlags().VisitAll(add)
	cmd.InheritedFlags().VisitAll(add)
	return out
}

func prefixed(p string, s []string) []string {
	out := make([]string, len(s))
	for i, v := range s {
		out[i] = p + v
	}
	return out
}

func orList(s []string) string {
	if len(s) <= 1 {
		return strings.Join(s, "")
	}
	return strings.Join(s[:len(s)-1], ", ") + " or " + s[len(s)-1]
}

// editDistance is the Levenshtein distance between a and b (short words).
func editDistance(a, b string) int {
	prev := make([]int, len(b)+1)
	cur := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
		}
		prev, cur = cur, prev
	}
	return prev[len(b)]
}
