package main

// The gRPC call: one unary call over HTTP/2 on the agent's unix socket, and the two protobuf
// messages it carries.
//
// Why not grpc-go: the plugin is a process that lives for one call, and grpc-go's start (its
// packages' initialisation, a ClientConn with its resolver, balancer and transport goroutines)
// was half of the plugin's CPU time (3.2 ms a call against 1.3 here, docs/benchmarks.md). A
// unary call is a small, fixed exchange: the HTTP/2 preface and SETTINGS, one HEADERS + DATA
// request, then HEADERS, DATA and trailers back; that is all this file speaks, with HPACK from
// golang.org/x/net/http2/hpack. The agent's side is the real grpcio server, and
// tests/unit/test_plugin_forms.py checks this client against it (large messages, errors).
//
// The messages (proto/overlay/cni/v1/cni.proto: CniRequest out, CniReply back) are encoded
// with protowire by hand: generated code would bring the protobuf runtime's registry into
// every start.

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"net/url"
	"sort"
	"strconv"
	"time"
	"unicode/utf8"

	"golang.org/x/net/http2/hpack"
	"google.golang.org/protobuf/encoding/protowire"
)

const (
	preface = "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"

	frameData, frameHeaders, frameRSTStream, frameSettings           = 0x0, 0x1, 0x3, 0x4
	framePing, frameGoAway, frameWindowUpdate, frameContinuation     = 0x6, 0x7, 0x8, 0x9
	flagEndStream, flagAck, flagEndHeaders, flagPadded, flagPriority = 0x1, 0x1, 0x4, 0x8, 0x20

	settingInitialWindow, settingMaxFrame = 0x4, 0x5
	defaultWindow, defaultMaxFrame        = 65535, 16384
	stream                                = 1 // the one stream of the connection
)

// statusNames: gRPC's status codes by number, as the Python plugin and grpcio name them.
var statusNames = []string{"OK", "CANCELLED", "UNKNOWN", "INVALID_ARGUMENT", "DEADLINE_EXCEEDED",
	"NOT_FOUND", "ALREADY_EXISTS", "PERMISSION_DENIED", "RESOURCE_EXHAUSTED", "FAILED_PRECONDITION",
	"ABORTED", "OUT_OF_RANGE", "UNIMPLEMENTED", "INTERNAL", "UNAVAILABLE", "DATA_LOSS",
	"UNAUTHENTICATED"}

// rpcFailure: the call did not complete (transport trouble, or a non-OK grpc-status).
type rpcFailure struct{ status, message string }

func (f *rpcFailure) Error() string { return f.status + ": " + f.message }

func fail(status, format string, args ...interface{}) error {
	return &rpcFailure{status, fmt.Sprintf(format, args...)}
}

type call struct {
	conn          net.Conn
	header        [9]byte
	connWindow    int64
	streamWindow  int64
	initialWindow int64
	maxFrame      int
	decoder       *hpack.Decoder // one per connection: its dynamic table spans header blocks
	fields        map[string]string
	block         []byte // a header block until its END_HEADERS
	body          []byte
	ended         bool // END_STREAM seen
}

// unaryCall sends one request to method (e.g. /overlay.cni.v1.Cni/Add) on the agent's unix
// socket and returns the reply's bytes.
func unaryCall(ctx context.Context, socketPath, method string, request []byte) ([]byte, error) {
	var d net.Dialer
	conn, err := d.DialContext(ctx, "unix", socketPath)
	if err != nil {
		return nil, fail("UNAVAILABLE", "%v", err)
	}
	defer conn.Close()
	deadline, _ := ctx.Deadline()
	conn.SetDeadline(deadline)
	c := &call{conn: conn, connWindow: defaultWindow, streamWindow: defaultWindow,
		initialWindow: defaultWindow, maxFrame: defaultMaxFrame, fields: map[string]string{},
		decoder: hpack.NewDecoder(4096, nil)}
	if err := c.send(method, request, time.Until(deadline)); err != nil {
		return nil, c.transport(err)
	}
	for !c.ended || len(c.block) > 0 {
		if err := c.step(); err != nil {
			return nil, c.transport(err)
		}
	}
	return c.reply()
}

// transport words a socket error as the Python plugin does.
func (c *call) transport(err error) error {
	var failure *rpcFailure
	var timeout interface{ Timeout() bool }
	switch {
	case errors.As(err, &failure):
		return err
	case errors.As(err, &timeout) && timeout.Timeout():
		return fail("DEADLINE_EXCEEDED", "no answer from the agent in time")
	case errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF):
		return fail("UNAVAILABLE", "the agent closed the connection")
	}
	return fail("UNAVAILABLE", "%v", err)
}

func (c *call) write(kind, flags byte, streamID uint32, payload []byte) error {
	var h [9]byte
	h[0], h[1], h[2] = byte(len(payload)>>16), byte(len(payload)>>8), byte(len(payload))
	h[3], h[4] = kind, flags
	binary.BigEndian.PutUint32(h[5:], streamID)
	_, err := c.conn.Write(append(h[:], payload...))
	return err
}

func (c *call) send(method string, message []byte, timeout time.Duration) error {
	var block bytes.Buffer
	enc := hpack.NewEncoder(&block)
	millis := timeout.Milliseconds()
	if millis < 1 {
		millis = 1
	}
	for _, f := range [][2]string{{":method", "POST"}, {":scheme", "http"}, {":path", method},
		{":authority", "localhost"}, {"content-type", "application/grpc"}, {"te", "trailers"},
		{"grpc-timeout", strconv.FormatInt(millis, 10) + "m"}} {
		enc.WriteField(hpack.HeaderField{Name: f[0], Value: f[1]})
	}
	if _, err := c.conn.Write([]byte(preface)); err != nil {
		return err
	}
	if err := c.write(frameSettings, 0, 0, nil); err != nil {
		return err
	}
	if err := c.write(frameHeaders, flagEndHeaders, stream, block.Bytes()); err != nil {
		return err
	}
	// gRPC's length-prefixed message: not compressed, its length, the bytes.
	data := make([]byte, 5, 5+len(message))
	binary.BigEndian.PutUint32(data[1:], uint32(len(message)))
	data = append(data, message...)
	for sent := 0; sent < len(data); {
		room := int64(c.maxFrame)
		if c.connWindow < room {
			room = c.connWindow
		}
		if c.streamWindow < room {
			room = c.streamWindow
		}
		if room <= 0 {
			if err := c.step(); err != nil { // wait for WINDOW_UPDATE or SETTINGS
				return err
			}
			continue
		}
		chunk := data[sent:]
		if int64(len(chunk)) > room {
			chunk = chunk[:room]
		}
		sent += len(chunk)
		flags := byte(0)
		if sent == len(data) {
			flags = flagEndStream
		}
		if err := c.write(frameData, flags, stream, chunk); err != nil {
			return err
		}
		c.connWindow -= int64(len(chunk))
		c.streamWindow -= int64(len(chunk))
	}
	return nil
}

// step reads and handles one frame.
func (c *call) step() error {
	if _, err := io.ReadFull(c.conn, c.header[:]); err != nil {
		return err
	}
	length := int(c.header[0])<<16 | int(c.header[1])<<8 | int(c.header[2])
	kind, flags := c.header[3], c.header[4]
	streamID := binary.BigEndian.Uint32(c.header[5:]) & 0x7fffffff
	payload := make([]byte, length)
	if _, err := io.ReadFull(c.conn, payload); err != nil {
		return err
	}
	switch {
	case kind == frameSettings && flags&flagAck == 0:
		for i := 0; i+6 <= len(payload); i += 6 {
			id, value := binary.BigEndian.Uint16(payload[i:]), binary.BigEndian.Uint32(payload[i+2:])
			switch id {
			case settingInitialWindow:
				c.streamWindow += int64(value) - c.initialWindow
				c.initialWindow = int64(value)
			case settingMaxFrame:
				c.maxFrame = int(value)
			}
		}
		return c.write(frameSettings, flagAck, 0, nil)
	case kind == framePing && flags&flagAck == 0:
		return c.write(framePing, flagAck, 0, payload)
	case kind == frameGoAway:
		// A graceful GOAWAY names the last stream the server will still finish: if that
		// includes ours, the answer is coming (an agent shutting down completes its calls).
		if len(payload) < 4 || binary.BigEndian.Uint32(payload)&0x7fffffff < stream {
			return fail("UNAVAILABLE", "the agent is shutting down")
		}
	case kind == frameWindowUpdate && len(payload) >= 4:
		increment := int64(binary.BigEndian.Uint32(payload) & 0x7fffffff)
		if streamID == 0 {
			c.connWindow += increment
		} else if streamID == stream {
			c.streamWindow += increment
		}
	case streamID != stream:
	case kind == frameRSTStream:
		return fail("INTERNAL", "the agent reset the call")
	case kind == frameData:
		data, err := unpad(flags, payload, false)
		if err != nil {
			return err
		}
		c.body = append(c.body, data...)
		if len(payload) > 0 { // give the window back, so a large answer cannot stall
			var update [4]byte
			binary.BigEndian.PutUint32(update[:], uint32(len(payload)))
			if err := c.write(frameWindowUpdate, 0, 0, update[:]); err != nil {
				return err
			}
			if err := c.write(frameWindowUpdate, 0, stream, update[:]); err != nil {
				return err
			}
		}
	case kind == frameHeaders || kind == frameContinuation:
		fragment, err := unpad(flags, payload, kind == frameHeaders)
		if err != nil {
			return err
		}
		c.block = append(c.block, fragment...)
		if flags&flagEndHeaders != 0 {
			fields, err := c.decoder.DecodeFull(c.block)
			if err != nil {
				return fail("INTERNAL", "bad headers from the agent: %v", err)
			}
			for _, f := range fields {
				c.fields[f.Name] = f.Value
			}
			c.block = nil
		}
	}
	if streamID == stream && flags&flagEndStream != 0 && (kind == frameData || kind == frameHeaders) {
		c.ended = true
	}
	return nil
}

func unpad(flags byte, payload []byte, headers bool) ([]byte, error) {
	if flags&flagPadded != 0 {
		if len(payload) < 1 || int(payload[0]) > len(payload)-1 {
			return nil, fail("INTERNAL", "a malformed frame from the agent")
		}
		payload = payload[1 : len(payload)-int(payload[0])]
	}
	if headers && flags&flagPriority != 0 {
		if len(payload) < 5 {
			return nil, fail("INTERNAL", "a malformed frame from the agent")
		}
		payload = payload[5:]
	}
	return payload, nil
}

// reply: the call's outcome from its trailers (grpc-status, grpc-message) and body.
func (c *call) reply() ([]byte, error) {
	code, err := strconv.Atoi(c.fields["grpc-status"])
	if err != nil {
		return nil, fail("INTERNAL", "the agent's answer has no grpc-status")
	}
	if code != 0 {
		name := "grpc-status " + strconv.Itoa(code)
		if code > 0 && code < len(statusNames) {
			name = statusNames[code]
		}
		message, err := url.PathUnescape(c.fields["grpc-message"])
		if err != nil {
			message = c.fields["grpc-message"]
		}
		return nil, &rpcFailure{name, message}
	}
	if len(c.body) < 5 || c.body[0] != 0 {
		return nil, fail("INTERNAL", "the agent's answer is not one uncompressed message")
	}
	size := binary.BigEndian.Uint32(c.body[1:5])
	if int(size) != len(c.body)-5 {
		return nil, fail("INTERNAL", "the agent's answer is %d bytes, its prefix says %d",
			len(c.body)-5, size)
	}
	return c.body[5:], nil
}

// encodeRequest: CniRequest { map<string,string> env = 1; bytes netconf = 2; }, the env's
// entries sorted by key (deterministic bytes, as the Python plugin sends them).
func encodeRequest(env map[string]string, netconf []byte) []byte {
	keys := make([]string, 0, len(env))
	for key := range env {
		keys = append(keys, key)
	}
	sort.Strings(keys)
	var out []byte
	for _, key := range keys {
		var entry []byte
		entry = protowire.AppendTag(entry, 1, protowire.BytesType)
		entry = protowire.AppendString(entry, key)
		entry = protowire.AppendTag(entry, 2, protowire.BytesType)
		entry = protowire.AppendString(entry, env[key])
		out = protowire.AppendTag(out, 1, protowire.BytesType)
		out = protowire.AppendBytes(out, entry)
	}
	out = protowire.AppendTag(out, 2, protowire.BytesType)
	return protowire.AppendBytes(out, netconf)
}

type reply struct {
	result  []byte
	isError bool
	code    uint32
	msg     string
	details string
}

// fields walks a message: each field's number and wire type, with its varint value or its
// bytes. Unknown fields are skipped; a repeated one's last value wins, as protobuf says.
func fields(data []byte, each func(num protowire.Number, typ protowire.Type, v uint64, b []byte)) error {
	for len(data) > 0 {
		num, typ, n := protowire.ConsumeTag(data)
		if n < 0 {
			return protowire.ParseError(n)
		}
		data = data[n:]
		switch typ {
		case protowire.VarintType:
			v, m := protowire.ConsumeVarint(data)
			if m < 0 {
				return protowire.ParseError(m)
			}
			each(num, typ, v, nil)
			n = m
		case protowire.BytesType:
			b, m := protowire.ConsumeBytes(data)
			if m < 0 {
				return protowire.ParseError(m)
			}
			each(num, typ, 0, b)
			n = m
		default:
			n = protowire.ConsumeFieldValue(num, typ, data)
			if n < 0 {
				return protowire.ParseError(n)
			}
		}
		data = data[n:]
	}
	return nil
}

// decodeReply: CniReply { oneof outcome { bytes result = 1; CniError error = 2; } } with
// CniError { ErrorCode code = 1; string msg = 2; string details = 3; }.
func decodeReply(data []byte) (reply, error) {
	var r reply
	var errorBody []byte
	err := fields(data, func(num protowire.Number, typ protowire.Type, _ uint64, b []byte) {
		switch {
		case num == 1 && typ == protowire.BytesType:
			r.result, r.isError, errorBody = b, false, nil
		case num == 2 && typ == protowire.BytesType:
			r.result, r.isError, errorBody = nil, true, b
		}
	})
	if err != nil || !r.isError {
		return r, err
	}
	err = fields(errorBody, func(num protowire.Number, typ protowire.Type, v uint64, b []byte) {
		switch {
		case num == 1 && typ == protowire.VarintType:
			r.code = uint32(v)
		case num == 2 && typ == protowire.BytesType:
			r.msg = string(b)
		case num == 3 && typ == protowire.BytesType:
			r.details = string(b)
		}
	})
	if err == nil && (!utf8.ValidString(r.msg) || !utf8.ValidString(r.details)) {
		err = errors.New("the error's text is not UTF-8")
	}
	return r, err
}
