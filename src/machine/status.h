// `diskseal status`: what Get-AzVMDiskEncryptionStatus shows for ADE, in ADE's words, derived
// from the machine (discovery), the state records of enable/disable and the LUKS2 reencryption
// metadata of each header. Nothing is cached: a status taken while an enable runs in another
// process, or after it crashed, reads the same files that process writes (atomically) and the
// header it commits, so the percent is the engine's own committed progress.
//
// Threading: pure reads; safe to call while enable/disable run in other processes.
#pragma once

#include <optional>
#include <string>
#include <vector>

#include "io/block_device.h"
#include "machine/discovery.h"
#include "util/status.h"

namespace ds::machine {

struct VolumeStatus {
  std::string mountpoint, device, name;  // name: the mapping, "" when diskseal has no record
  // NotEncrypted, NotMounted, EncryptionInProgress, DecryptionInProgress, Encrypted
  std::string state;
  std::string step;                      // the record's last completed step, "" without record
  double percent = 0;                    // of the current operation, from the header (0.1 steps)
  std::optional<double> mib_s, eta_s;    // while the running process reports them
  std::optional<int64_t> pid;            // that process
  std::string last_error;
};

struct MachineStatus {
  std::string os_volume;         // OsVolumeEncrypted: NotEncrypted, EncryptionInProgress,
                                 // VMRestartPending, Encrypted
  std::string data_volumes;      // DataVolumesEncrypted
  std::string progress_message;  // ProgressMessage, ADE's phrasing
  std::string running;           // "pid N (command)" holding the machine lock, "" when none
  std::vector<VolumeStatus> volumes;
};

// `root` for discovery and (live machine only) the mount table; `state_dir` as enable's.
Result<MachineStatus> GetStatus(Env& env, const MachineRoot& root, const std::string& state_dir);

// docs/json-schemas.md "status".
std::string StatusToJson(const MachineStatus& s);
std::string StatusToText(const MachineStatus& s);

}  // namespace ds::machine
