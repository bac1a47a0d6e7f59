package main

// The gRPC call and the two protobuf messages it carries.
//
// The messages (proto/overlay/cni/v1/cni.proto: CniRequest out, CniReply back) are encoded
// with protowire by hand, through a codec that passes bytes: generated code would bring the
// protobuf runtime's registry into every start of a process that lives for one call.

import (
	"context"
	"errors"
	"fmt"
	"net"
	"sort"
	"strings"
	"unicode/utf8"

	"google.golang.org/grpc"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protowire"
)

// rawCodec hands gRPC bytes already in protobuf's wire format. Its name is "proto", so the
// call's content-type is application/grpc+proto, which the agent's grpcio server expects.
type rawCodec struct{}

func (rawCodec) Marshal(v interface{}) ([]byte, error) { return *(v.(*[]byte)), nil }
func (rawCodec) Unmarshal(data []byte, v interface{}) error {
	*(v.(*[]byte)) = append([]byte(nil), data...)
	return nil
}
func (rawCodec) Name() string { return "proto" }

// unaryCall sends one request to method (e.g. /overlay.cni.v1.Cni/Add) on the agent's unix
// socket and returns the reply's bytes. Any failure, of the transport or a non-OK status, is
// an error whose text names the gRPC status, as "UNAVAILABLE: ...".
func unaryCall(ctx context.Context, socketPath, method string, request []byte) ([]byte, error) {
	dial := func(ctx context.Context, _ string) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, "unix", socketPath)
	}
	// passthrough: the target is a name only (it becomes :authority); the dialer connects.
	conn, err := grpc.DialContext(ctx, "passthrough:///overlay-agent", grpc.WithInsecure(),
		grpc.WithContextDialer(dial))
	if err != nil {
		return nil, failure(err)
	}
	defer conn.Close()
	var reply []byte
	// Not WaitForReady: an agent that is not listening is an immediate "try again later".
	if err := conn.Invoke(ctx, method, &request, &reply, grpc.ForceCodec(rawCodec{})); err != nil {
		return nil, failure(err)
	}
	return reply, nil
}

// failure renders a gRPC error as STATUS: message, STATUS as the Python plugin names it.
func failure(err error) error {
	st, _ := status.FromError(err)
	name := st.Code().String() // "Unavailable", "DeadlineExceeded", ...
	var upper strings.Builder
	for i, r := range name {
		if i > 0 && r >= 'A' && r <= 'Z' {
			upper.WriteByte('_')
		}
		upper.WriteRune(r)
	}
	return fmt.Errorf("%s: %s", strings.ToUpper(upper.String()), st.Message())
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
