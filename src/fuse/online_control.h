// Online in-place operations without device-mapper (README "Online without device-mapper"): the
// daemon serving RUN/NAME runs the engine itself, behind its GatedDevice (fuse/gated_device.h), when
// `diskseal resume` (or encrypt/decrypt/reencrypt carrying on a recorded operation) asks it to.
//
// The control channel is a unix stream socket, RUN/.state/NAME.sock (the .state directory is
// 0700; the daemon also checks that the peer is root or its own user). One request at a time:
//   client -> daemon  "RUN <hotzone_bytes> <threads> <stop_after> <nkeys>\n", then per key
//                     "<digest> <len>\n" and <len> raw bytes (volume keys; the socket never leaves
//                     the machine, the daemon keeps them in locked memory and drops them after);
//                     later, at any time, "STOP\n" (or closing the socket): stop at the next
//                     commit point.
//   daemon -> client  "P <done>\n" after every hotzone (bytes in the new layout), then one final
//                     "R <code> <message>\n" (util/status.h code; 0 = finished).
// Per hotzone the engine calls the gate: Hold closes the hotzone's plaintext range of the view
// (writes and reads there wait, in-flight ones are waited for), Release builds a new view from the
// header just committed and swaps it in, then reopens the range. A step that fails between the
// two is recovered in the daemon (the flagged hotzone finished from its resilience data, as `open`
// does), or the range fails with EIO rather than serving bytes in an unknown layout.
// A kill -9 of the daemon leaves only the header (no kernel state): `open` recovers a flagged
// hotzone and `resume` finishes.
#pragma once

#include <atomic>
#include <map>
#include <memory>
#include <optional>
#include <string>

#include "fuse/gated_device.h"
#include "fuse/run_dir.h"
#include "io/block_device.h"
#include "util/progress.h"
#include "util/secure_buffer.h"
#include "util/status.h"

namespace ds::fuse {

std::string ControlSocketPath(const RunDir& run, const std::string& name);

struct ControlConfig {
  Env* env = nullptr;        // borrowed, outlives the server
  std::string name;          // the served volume's name (messages)
  std::string device;        // data device path, as recorded
  std::string header;        // detached header, or "" (attached)
  uint32_t atomic_unit = 4096;  // the served file's sector unit: no new sector size above it
  GatedDevice* view = nullptr;  // borrowed, outlives the server
};

// Listens on `socket_path` and runs requests on its own thread until destroyed. The destructor
// asks a running operation to stop at its next commit point and waits for it.
// Precondition: called after the signals are blocked (FileServer::HandleSignals), so that the
// threads started here never take SIGTERM/SIGINT.
class ControlServer {
 public:
  static Result<std::unique_ptr<ControlServer>> Start(const std::string& socket_path,
                                                      ControlConfig cfg);
  ~ControlServer();
  ControlServer(const ControlServer&) = delete;
  ControlServer& operator=(const ControlServer&) = delete;

  struct Impl;

 private:
  explicit ControlServer(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

struct DaemonRunOptions {
  uint64_t hotzone_bytes = 32u << 20;
  unsigned threads = 0;
  uint64_t stop_after = 0;
};

// The live userspace view of the volume (data device `device`, detached header `header` or ""),
// if one serves it from `run`. Paths are compared canonically. An unreadable run directory
// serves nothing (nullopt).
Result<std::optional<Mapping>> ServingDaemon(RunDir& run, const std::string& device,
                                             const std::string& header);

// Asks the daemon of `m` to run the volume's recorded operation and relays its progress into
// `progress` (which must have been made with the state's done/total). `stop` (may be null) is
// forwarded as a STOP at the next check. Returns the daemon's result (kInterrupted when stopped).
Status RunInDaemon(const RunDir& run, const Mapping& m,
                   const std::map<int, const SecureBuffer*>& keys, const DaemonRunOptions& opts,
                   Progress* progress, const std::atomic<bool>* stop);

}  // namespace ds::fuse
