// A libcni test driver: runs a CNI configuration list the way a container runtime does, through
// the libcni library a runtime links (Debian's golang-github-appc-cni-dev, libcni 1.1.2).
//
//	driver <conflist.json | net.conf> add|check|del|version|status|gc
//
// Environment (read once, then removed, so plugins see only what a runtime would give them):
//
//	CNI_PATH_DIRS      ':'-separated plugin directories (default /usr/lib/cni)
//	NETNS, CID, IFN    RuntimeConf.NetNS, .ContainerID (default "c1"), .IfName (default "eth0")
//	CACHE              libcni's cache directory (default /var/lib/cni, libcni's own default)
//	CAP_ARGS           JSON object: RuntimeConf.CapabilityArgs (e.g. {"mac": "...", "ips": [...]})
//	CNI_ARGS_PAIRS     "K=V;K=V": RuntimeConf.Args, which libcni passes on as CNI_ARGS
//	VALID_ATTACHMENTS  JSON list of {"containerID", "ifname"} for gc; unset = no list given
//	TIMING             "1": write {"op", "ms"} (the libcni call alone) as one JSON line on stderr
//
// Output: add prints the result JSON, version prints [{"type", "supportedVersions"}], the others
// print nothing; exit 0. On failure: {"error": "<libcni's message>"} on stdout, plus "code",
// "msg" and "details" when the error is (or wraps) a CNI error object, and exit 1.
//
// libcni 1.1.2 has no STATUS or GC (they arrived with libcni 1.2 and spec 1.1.0), so status and
// gc follow libcni 1.2's GetStatusNetworkList and GCNetworkList here, built from 1.1.2's pieces.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"github.com/containernetworking/cni/libcni"
	"github.com/containernetworking/cni/pkg/invoke"
	"github.com/containernetworking/cni/pkg/types"
	"github.com/containernetworking/cni/pkg/version"
)

// gcAttachment is libcni 1.2's types.GCAttachment.
type gcAttachment struct {
	ContainerID string `json:"containerID"`
	IfName      string `json:"ifname"`
}

// cachedAttachment is the part of a libcni result-cache file that GC needs.
type cachedAttachment struct {
	Kind           string                 `json:"kind"`
	ContainerID    string                 `json:"containerId"`
	IfName         string                 `json:"ifName"`
	NetworkName    string                 `json:"networkName"`
	NetNS          string                 `json:"netns"` // written by libcni >= 1.2 only
	CniArgs        [][2]string            `json:"cniArgs"`
	CapabilityArgs map[string]interface{} `json:"capabilityArgs"`
}

type settings struct {
	paths            []string
	cacheDir         string
	rt               *libcni.RuntimeConf
	validAttachments []gcAttachment
	haveAttachments  bool
	timing           bool
}

var controlVars = []string{"CNI_PATH_DIRS", "NETNS", "CID", "IFN", "CACHE", "CAP_ARGS",
	"CNI_ARGS_PAIRS", "VALID_ATTACHMENTS", "TIMING"}

func getenv(key, fallback string) string {
	if v, ok := os.LookupEnv(key); ok && v != "" {
		return v
	}
	return fallback
}

func usage(format string, a ...interface{}) {
	fmt.Fprintf(os.Stderr, format+"\n", a...)
	fmt.Fprintln(os.Stderr, "usage: driver <conflist.json> add|check|del|version|status|gc")
	os.Exit(2)
}

func parsePairs(s string) ([][2]string, error) {
	var pairs [][2]string
	for _, item := range strings.Split(s, ";") {
		if item == "" {
			continue
		}
		kv := strings.SplitN(item, "=", 2)
		if len(kv) != 2 {
			return nil, fmt.Errorf("CNI_ARGS_PAIRS: %q is not K=V", item)
		}
		pairs = append(pairs, [2]string{kv[0], kv[1]})
	}
	return pairs, nil
}

func readSettings() (*settings, error) {
	s := &settings{
		paths:    filepath.SplitList(getenv("CNI_PATH_DIRS", "/usr/lib/cni")),
		cacheDir: getenv("CACHE", libcni.CacheDir),
		timing:   os.Getenv("TIMING") == "1",
		rt: &libcni.RuntimeConf{
			ContainerID: getenv("CID", "c1"),
			NetNS:       os.Getenv("NETNS"),
			IfName:      getenv("IFN", "eth0"),
		},
	}
	if raw := os.Getenv("CAP_ARGS"); raw != "" {
		if err := json.Unmarshal([]byte(raw), &s.rt.CapabilityArgs); err != nil {
			return nil, fmt.Errorf("CAP_ARGS is not a JSON object: %w", err)
		}
	}
	pairs, err := parsePairs(os.Getenv("CNI_ARGS_PAIRS"))
	if err != nil {
		return nil, err
	}
	s.rt.Args = pairs
	if raw, ok := os.LookupEnv("VALID_ATTACHMENTS"); ok {
		s.haveAttachments = true
		if err := json.Unmarshal([]byte(raw), &s.validAttachments); err != nil {
			return nil, fmt.Errorf("VALID_ATTACHMENTS is not a JSON list of attachments: %w", err)
		}
	}
	for _, key := range controlVars {
		_ = os.Unsetenv(key)
	}
	return s, nil
}

// fail prints the error as JSON on stdout and exits 1.
func fail(errs ...error) {
	out := map[string]interface{}{}
	var msgs []string
	for _, err := range errs {
		msgs = append(msgs, err.Error())
		var cniErr *types.Error
		if _, seen := out["code"]; !seen && errors.As(err, &cniErr) {
			out["code"] = cniErr.Code
			out["msg"] = cniErr.Msg
			if cniErr.Details != "" {
				out["details"] = cniErr.Details
			}
		}
	}
	out["error"] = strings.Join(msgs, "; ")
	if len(errs) > 1 {
		out["errors"] = msgs
	}
	emit(out)
	os.Exit(1)
}

func emit(v interface{}) {
	data, err := json.Marshal(v)
	if err != nil {
		fmt.Fprintf(os.Stderr, "marshal output: %v\n", err)
		os.Exit(1)
	}
	fmt.Println(string(data))
}

func atLeast(v, min string) bool {
	ok, err := version.GreaterThanOrEqualTo(v, min)
	return err == nil && ok
}

// disableGC reads the list-level flag as libcni 1.2 does: a bool, or the strings "true"/"false".
func disableGC(listBytes []byte) bool {
	var raw map[string]interface{}
	if err := json.Unmarshal(listBytes, &raw); err != nil {
		return false
	}
	switch v := raw["disableGC"].(type) {
	case bool:
		return v
	case string:
		return strings.EqualFold(v, "true")
	}
	return false
}

// execEach runs one command on every plugin of the list, as libcni 1.2 does for STATUS and GC:
// the plugin's own config with the list's name and cniVersion (and `extra`) injected; the
// container variables are exported empty.
func execEach(ctx context.Context, s *settings, list *libcni.NetworkConfigList, command string,
	extra map[string]interface{}, stopAtFirst bool) []error {
	inject := map[string]interface{}{"name": list.Name, "cniVersion": list.CNIVersion}
	for k, v := range extra {
		inject[k] = v
	}
	var errs []error
	for _, plugin := range list.Plugins {
		conf, err := libcni.InjectConf(plugin, inject)
		if err == nil {
			var path string
			if path, err = invoke.FindInPath(plugin.Network.Type, s.paths); err == nil {
				args := &invoke.Args{Command: command, Path: strings.Join(s.paths, ":")}
				err = invoke.ExecPluginWithoutResult(ctx, path, conf.Bytes, args, nil)
			}
		}
		if err != nil {
			errs = append(errs, fmt.Errorf("plugin type=%q failed (%s): %w", plugin.Network.Type,
				strings.ToLower(command), err))
			if stopAtFirst {
				break
			}
		}
	}
	return errs
}

// cachedAttachments lists the libcni result-cache entries of one network (libcni 1.2's
// GetCachedAttachments, restricted to the network as GCNetworkList does).
func cachedAttachments(cacheDir, network string) []cachedAttachment {
	files, _ := filepath.Glob(filepath.Join(cacheDir, "results", "*"))
	sort.Strings(files)
	var out []cachedAttachment
	for _, f := range files {
		data, err := os.ReadFile(f)
		if err != nil {
			continue
		}
		var c cachedAttachment
		if json.Unmarshal(data, &c) != nil || c.Kind != "cniCacheV1" || c.NetworkName != network {
			continue
		}
		out = append(out, c)
	}
	return out
}

// gc follows libcni 1.2's GCNetworkList: DEL every cached attachment of the network that is not
// in the valid set, then (spec 1.1.0 and later) send GC with the valid set to every plugin.
func gc(ctx context.Context, s *settings, cni *libcni.CNIConfig, list *libcni.NetworkConfigList) []error {
	if disableGC(list.Bytes) {
		return nil
	}
	valid := map[gcAttachment]bool{}
	for _, a := range s.validAttachments {
		valid[a] = true
	}
	var errs []error
	for _, c := range cachedAttachments(s.cacheDir, list.Name) {
		if valid[gcAttachment{c.ContainerID, c.IfName}] {
			continue
		}
		rt := &libcni.RuntimeConf{ContainerID: c.ContainerID, NetNS: c.NetNS, IfName: c.IfName,
			Args: c.CniArgs, CapabilityArgs: c.CapabilityArgs}
		if err := cni.DelNetworkList(ctx, list, rt); err != nil {
			errs = append(errs, fmt.Errorf("failed to delete stale attachment %s %s: %w",
				c.ContainerID, c.IfName, err))
		}
	}
	if atLeast(list.CNIVersion, "1.1.0") {
		extra := map[string]interface{}{}
		if s.haveAttachments {
			attachments := s.validAttachments // a nil slice goes out as null, as in libcni 1.2
			extra["cni.dev/valid-attachments"] = attachments
			extra["cni.dev/attachments"] = attachments // GH-1101: the name the spec first used
		}
		errs = append(errs, execEach(ctx, s, list, "GC", extra, false)...)
	}
	return errs
}

// loadList reads a conflist, or a single network configuration (*.conf) turned into a list of
// one the way runtimes load /etc/cni/net.d/*.conf (ConfFromFile, then ConfListFromConf).
func loadList(path string) (*libcni.NetworkConfigList, error) {
	if strings.HasSuffix(path, ".conf") {
		conf, err := libcni.ConfFromFile(path)
		if err != nil {
			return nil, err
		}
		return libcni.ConfListFromConf(conf)
	}
	return libcni.ConfListFromFile(path)
}

func main() {
	if len(os.Args) != 3 {
		usage("expected 2 arguments, got %d", len(os.Args)-1)
	}
	s, err := readSettings()
	if err != nil {
		fail(err)
	}
	list, err := loadList(os.Args[1])
	if err != nil {
		fail(err)
	}
	cni := libcni.NewCNIConfigWithCacheDir(s.paths, s.cacheDir, nil)
	ctx := context.Background()
	op := os.Args[2]

	start := time.Now()
	var result types.Result
	var errs []error
	var versions []map[string]interface{}
	switch op {
	case "add":
		result, err = cni.AddNetworkList(ctx, list, s.rt)
		errs = []error{err}
	case "check":
		errs = []error{cni.CheckNetworkList(ctx, list, s.rt)}
	case "del":
		errs = []error{cni.DelNetworkList(ctx, list, s.rt)}
	case "version":
		for _, plugin := range list.Plugins {
			info, err := cni.GetVersionInfo(ctx, plugin.Network.Type)
			if err != nil {
				errs = append(errs, fmt.Errorf("plugin type=%q failed (version): %w", plugin.Network.Type, err))
				break
			}
			versions = append(versions, map[string]interface{}{
				"type": plugin.Network.Type, "supportedVersions": info.SupportedVersions()})
		}
	case "status": // libcni 1.2: nothing to ask below spec 1.1.0; stop at the first error
		if atLeast(list.CNIVersion, "1.1.0") {
			errs = execEach(ctx, s, list, "STATUS", nil, true)
		}
	case "gc":
		errs = gc(ctx, s, cni, list)
	default:
		usage("unknown operation %q", op)
	}
	if s.timing {
		data, _ := json.Marshal(map[string]interface{}{
			"op": op, "ms": float64(time.Since(start).Microseconds()) / 1000.0})
		fmt.Fprintln(os.Stderr, string(data))
	}

	var failed []error
	for _, e := range errs {
		if e != nil {
			failed = append(failed, e)
		}
	}
	if len(failed) > 0 {
		fail(failed...)
	}
	switch op {
	case "add":
		emit(result)
	case "version":
		emit(versions)
	}
}
