// Command ovs is the `ovs` CNI plugin, compiled: what a runtime executes for "type": "ovs".
//
// It does what the Python plugin (../overlay_plugin_ovs/main.py) does, answer for answer:
// it reads CNI_* from the environment and the netconf from stdin, forwards both unchanged to
// the local overlay-agent over gRPC on its unix socket (netconf field agentSocket, default
// /run/overlay/agent.sock), and prints the result or the CNI error the agent returns. What it
// can decide alone it answers alone, agent or no agent: VERSION, an unknown CNI_COMMAND, a
// netconf that is not a JSON object, a cniVersion we do not speak. A transport failure is
// code 11 ("try again later": the agent may be restarting), 50 for STATUS.
//
// Why a compiled form: a runtime starts the plugin once per call, and a Python interpreter's
// start was most of an ADD's cost outside the agent (docs/benchmarks.md, "Where an ADD's
// time goes"). tests/unit/test_plugin_forms.py holds the two forms to the same answers.
package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"
)

const (
	defaultSocket = "/run/overlay/agent.sock"
	callTimeout   = 120 * time.Second

	incompatibleVersion = 1
	invalidEnv          = 4
	decodingFailure     = 6
	invalidNetconf      = 7
	tryAgainLater       = 11
	notAvailable        = 50
	internalError       = 100
)

// supportedVersions mirrors overlay.cni.netconf.SUPPORTED_VERSIONS (a unit test keeps them equal).
var supportedVersions = []string{"0.1.0", "0.2.0", "0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"}

// methods maps CNI_COMMAND to the agent's gRPC method, in the order error messages list them.
var methods = []struct{ command, method string }{
	{"ADD", "Add"}, {"DEL", "Del"}, {"CHECK", "Check"}, {"STATUS", "Status"}, {"GC", "Gc"},
}

type plugin struct {
	stdout io.Writer
}

// emit writes one JSON object and a newline, with <, > and & left as they are (as Python's
// json.dumps writes them).
func (p plugin) emit(body interface{}) {
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(body); err != nil { // cannot happen for the types used here
		buf.Reset()
		buf.WriteString(`{"cniVersion":"1.0.0","code":100,"msg":"the ovs CNI plugin failed"}` + "\n")
	}
	p.stdout.Write(buf.Bytes())
}

type cniError struct {
	CniVersion string `json:"cniVersion"`
	Code       uint32 `json:"code"`
	Msg        string `json:"msg"`
	Details    string `json:"details,omitempty"`
}

func (p plugin) fail(version string, code uint32, msg, details string) int {
	p.emit(cniError{CniVersion: version, Code: code, Msg: msg, Details: details})
	return 1
}

func supported(version string) bool {
	for _, v := range supportedVersions {
		if v == version {
			return true
		}
	}
	return false
}

func printable(text string) bool {
	for _, r := range text {
		if !unicode.IsPrint(r) {
			return false
		}
	}
	return true
}

// netconf is what the plugin itself reads of the netconf: the rest is the agent's to check.
type netconf struct {
	fields      map[string]json.RawMessage
	badJSON     string
	version     string // the netconf's cniVersion if it is a usable string, else 0.1.0
	givenString bool   // cniVersion is a string (maybe unsupported)
	given       string
}

func parseNetconf(stdin []byte, command string) netconf {
	nc := netconf{fields: map[string]json.RawMessage{}}
	empty := len(bytes.TrimSpace(stdin)) == 0
	if !empty {
		switch err := json.Unmarshal(stdin, &nc.fields); {
		case !utf8.Valid(stdin):
			nc.badJSON = "the netconf is not UTF-8"
		case err != nil:
			var value interface{}
			if json.Unmarshal(stdin, &value) == nil { // JSON, but an array, a string, ...
				nc.badJSON = "netconf must be a JSON object"
			} else {
				nc.badJSON = err.Error()
			}
		case nc.fields == nil: // null
			nc.badJSON = "netconf must be a JSON object"
		}
		if nc.badJSON != "" || nc.fields == nil {
			nc.fields = map[string]json.RawMessage{}
		}
	} else if command != "VERSION" {
		nc.badJSON = "stdin is empty; the runtime must pass the network configuration"
	}
	nc.version = "0.1.0"
	if raw, ok := nc.fields["cniVersion"]; ok {
		var clean bool
		if nc.given, clean = jsonString(raw); clean || nc.given != "" {
			nc.givenString = true
			if nc.given != "" && clean && printable(nc.given) {
				nc.version = nc.given
			}
		}
	}
	return nc
}

// jsonString decodes a JSON string. clean is false if it is not one, or if it held an
// escaped lone UTF-16 surrogate ("\udc80"): Go's decoder makes that U+FFFD without a word,
// where Python's (the other form of the plugin) keeps a surrogate no UTF-8 can carry.
func jsonString(raw json.RawMessage) (text string, clean bool) {
	if json.Unmarshal(raw, &text) != nil {
		return "", false
	}
	return text, strings.Count(text, string(utf8.RuneError)) <= replacementsGiven(raw)
}

// replacementsGiven counts the U+FFFD a JSON text holds itself: as UTF-8, or escaped.
func replacementsGiven(raw []byte) int {
	n := bytes.Count(raw, []byte(string(utf8.RuneError)))
	for i := 0; i < len(raw); i++ {
		if raw[i] != '\\' {
			continue
		}
		if i+6 <= len(raw) && raw[i+1] == 'u' {
			if v, err := strconv.ParseUint(string(raw[i+2:i+6]), 16, 32); err == nil && v == 0xFFFD {
				n++
			}
		}
		i++ // the escaped character: an escaped backslash starts no escape
	}
	return n
}

func usablePath(raw json.RawMessage) (string, bool) {
	path, clean := jsonString(raw)
	return path, clean && strings.HasPrefix(path, "/") && !strings.ContainsRune(path, 0)
}

// describe renders a JSON value as the Python plugin's repr() shows it: a string as
// pyRepr gives it, anything else as its JSON text.
func describe(raw json.RawMessage) string {
	var text string
	if json.Unmarshal(raw, &text) == nil {
		return pyRepr(text)
	}
	return string(raw)
}

// pyRepr quotes a string as Python's repr() does, so that both forms of the plugin word their
// errors alike: single quotes unless the text holds one and no double quote, backslash
// escapes for the quote, the backslash and what is not printable.
func pyRepr(text string) string {
	quote := '\''
	if strings.ContainsRune(text, '\'') && !strings.ContainsRune(text, '"') {
		quote = '"'
	}
	var b strings.Builder
	b.WriteRune(quote)
	for _, r := range text {
		switch {
		case r == quote || r == '\\':
			b.WriteRune('\\')
			b.WriteRune(r)
		case r == '\t':
			b.WriteString(`\t`)
		case r == '\n':
			b.WriteString(`\n`)
		case r == '\r':
			b.WriteString(`\r`)
		case unicode.IsPrint(r):
			b.WriteRune(r)
		case r < 0x100:
			fmt.Fprintf(&b, `\x%02x`, r)
		case r < 0x10000:
			fmt.Fprintf(&b, `\u%04x`, r)
		default:
			fmt.Fprintf(&b, `\U%08x`, r)
		}
	}
	b.WriteRune(quote)
	return b.String()
}

func (p plugin) run(environ []string, stdin []byte) int {
	env := map[string]string{}
	for _, kv := range environ {
		if i := strings.IndexByte(kv, '='); i > 0 {
			env[kv[:i]] = kv[i+1:]
		}
	}
	command := env["CNI_COMMAND"]
	nc := parseNetconf(stdin, command)
	version := nc.version

	if command == "VERSION" {
		answer := supportedVersions[len(supportedVersions)-1]
		if nc.givenString && supported(nc.given) {
			answer = nc.given
		}
		p.emit(struct {
			CniVersion        string   `json:"cniVersion"`
			SupportedVersions []string `json:"supportedVersions"`
		}{answer, supportedVersions})
		return 0
	}
	method := ""
	names := make([]string, len(methods))
	for i, m := range methods {
		names[i] = m.command
		if m.command == command {
			method = "/overlay.cni.v1.Cni/" + m.method
		}
	}
	if method == "" {
		return p.fail(version, invalidEnv, fmt.Sprintf(
			"CNI_COMMAND must be one of %s or VERSION, got %s", strings.Join(names, ", "), pyRepr(command)), "")
	}
	if nc.badJSON != "" {
		return p.fail(version, decodingFailure, "netconf on stdin is not valid JSON", nc.badJSON)
	}
	if !supported(version) {
		// Answered in a version the runtime can read: ours, not the one we do not speak.
		ours := supportedVersions[len(supportedVersions)-1]
		return p.fail(ours, incompatibleVersion,
			"incompatible CNI version: the netconf says "+pyRepr(version),
			"the ovs plugin supports "+strings.Join(supportedVersions, ", "))
	}
	socketPath := defaultSocket
	if raw, ok := nc.fields["agentSocket"]; ok {
		path, usable := usablePath(raw)
		if !usable {
			return p.fail(version, invalidNetconf,
				"agentSocket must be an absolute path, got "+describe(raw), "")
		}
		socketPath = path
	}
	cniEnv := map[string]string{}
	for key, value := range env {
		if strings.HasPrefix(key, "CNI_") {
			if !utf8.ValidString(key) || !utf8.ValidString(value) {
				return p.fail(version, invalidEnv, fmt.Sprintf("%s is not valid UTF-8: %q", key, value), "")
			}
			cniEnv[key] = value
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), callTimeout)
	defer cancel()
	body, err := unaryCall(ctx, socketPath, method, encodeRequest(cniEnv, stdin))
	if err != nil {
		// STATUS asks "can you serve ADD?": without an agent, no (50). Anything else may
		// simply be early, the agent restarting: try again later (11).
		code := uint32(tryAgainLater)
		if command == "STATUS" {
			code = notAvailable
		}
		return p.fail(version, code, fmt.Sprintf(
			"cannot reach overlay-agent at %s: is it running, and are you root?", socketPath), err.Error())
	}
	reply, err := decodeReply(body)
	if err != nil {
		return p.fail(version, internalError, "the ovs CNI plugin failed",
			"the agent's answer does not decode: "+err.Error())
	}
	if reply.isError {
		return p.fail(version, reply.code, reply.msg, reply.details)
	}
	if len(reply.result) > 0 {
		p.stdout.Write(append(reply.result, '\n'))
	}
	return 0
}

func main() {
	stdin, err := io.ReadAll(os.Stdin)
	p := plugin{stdout: os.Stdout}
	if err != nil {
		os.Exit(p.fail("1.0.0", internalError, "the ovs CNI plugin failed", "reading stdin: "+err.Error()))
	}
	os.Exit(p.run(os.Environ(), stdin))
}
