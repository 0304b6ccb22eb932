// `diskseal doctor`: every reason ADE's troubleshooting guide gives for a failed encryption, checked
// before anything is written, each as a finding that names the volume, shows the evidence and says
// what to do. `enable` runs the same checks (RunDoctor) and refuses on a blocking finding that the
// user did not --ignore.
//
// Checks (stable ids; docs/json-schemas.md and README "doctor" list them):
//   open-files, concurrent-tools, selinux, lvm-layout, memory, nested-mounts, filesystem-mode,
//   header-space, header-location, shrink-space, already-encrypted, interrupted,
//   kernel-support, vault, no-targets, volume-header, initramfs.
// Everything machine-side is read below the MachineRoot through its Env, so a captured tree
// tests each check; only the vault probe talks to the network.
//
// Threading: RunDoctor is a pure function of its inputs plus the vault's answers; no global state.
#pragma once

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "machine/discovery.h"
#include "util/status.h"
#include "vault/client.h"

namespace ds::machine {

enum class Severity { kBlocking, kWarning, kInfo };
const char* SeverityName(Severity s);  // "blocking", "warning", "info"

struct Finding {
  std::string check;                  // stable id, e.g. "open-files"
  Severity severity = Severity::kInfo;
  std::string volume;                 // mount point or device; "" when about the machine
  std::string message;                // one line
  std::vector<std::string> evidence;  // what was seen (pid 812 (postgres) /data/base/1 fd 7)
  std::string fix;                    // what to do; "" when nothing is needed
  // For a blocking finding, the Status code (so the exit code) it stands for when the check's
  // default does not fit (a vault token refused is kPermissionDenied, not kNetwork); kOk: the
  // check's default (see ReportStatus).
  Code code = Code::kOk;
};

// Every check id, in the order of the list above (for --ignore's validation and help).
std::vector<std::string> CheckIds();

enum class VolumeType { kData, kOs, kAll };
Result<VolumeType> ParseVolumeType(const std::string& s);  // "Data", "OS", "All" (any case)

// Where the LUKS2 header goes: in a file beside the volume (detached, works for any filesystem)
// or at the start of the device after shrinking the filesystem by the header size (ext2/3/4).
enum class HeaderMode { kDetached, kShrink };

struct DoctorOptions {
  VolumeType volume_type = VolumeType::kData;
  HeaderMode header_mode = HeaderMode::kDetached;
  // Check ids enable's --ignore passes: their findings stay in the report, downgraded to info and
// marked "ignored", so they no longer block.
  std::vector<std::string> ignore;
  // Where detached header files are kept (a machine path; must not be on a target volume).
  std::string header_dir = "/var/lib/diskseal";
  uint64_t header_bytes = 16u << 20;  // LUKS2 header + keyslots area diskseal writes by default
  // Free space (bytes) of filesystems, by machine path (a mount point or header_dir), for
  // captured trees whose filesystems do not exist here. A path not listed is statvfs'd through
  // the Env (the live path on a live root; the captured path otherwise, which reports the
  // test machine's space: tests list every path they check).
  std::map<std::string, uint64_t> free_bytes;
  // diskseal's own memory need (see memory check): the engine's one buffer, the PBKDF cost.
  uint64_t hotzone_bytes = 32u << 20;
  uint64_t pbkdf_memory_bytes = 1ull << 30;
  int self_pid = 0;  // not reported as holding files or running a tool (the doctor itself)
  // When not empty, only the Data volumes mounted at these mount points are targets (enable checks
  // the volumes it is about to start, not those it already encrypted or was told to leave alone).
  std::vector<std::string> only;
  // Mount points the caller encrypts without unmounting them (a linear LVM logical volume adopted
  // online, online/adopt.h): files open there are reported as info, not blocking.
  std::vector<std::string> no_unmount;
  // The vault probe runs when `vault.url` is set; `kek` adds the key permissions. With
  // `state_dir`, the vault is also asked (secrets:get only) what it holds of each recorded
  // volume's header.
  std::optional<vault::VaultClientOptions> vault;
  std::string kek;
  // The state directory (machine path) whose volume records (machine/state.h) name the detached
  // headers that check volume-header looks at; "" skips that check (enable, which checks volumes
  // it is about to start, leaves it empty).
  std::string state_dir;
  // Where the OS volume's detached header goes: on /boot, which the initramfs reads before / is
  // unlocked (README "OS volume: boot path").
  std::string os_header = "/boot/luks/osluksheader";
};

struct Report {
  std::vector<std::string> targets;  // the volumes checked, by mount point
  std::string open_mode;             // "dm-crypt", "userspace" or "none"
  std::vector<Finding> findings;     // blocking first, then warnings, then info
  bool blocking() const;
};

// Runs every check against `machine` (discovered from `root`). Errors only when the inputs are
// unusable (no Env); a check that cannot read something reports that as a finding instead.
Result<Report> RunDoctor(const MachineRoot& root, const Machine& machine, const DoctorOptions& opts);

// One line per finding "severity check volume: message", evidence and fix indented below.
std::string FormatText(const Report& r);
// The stable JSON document (docs/json-schemas.md, "doctor").
nlohmann::ordered_json ToJson(const Report& r);
// Ok without a blocking finding; else the Status of the first one, whose code is the exit code
// (README "Exit codes"): open-files, concurrent-tools 5; memory 3; filesystem-mode,
// kernel-support, header-location, initramfs 7; header-space, shrink-space 6; volume-header 4;
// vault 8; unless the finding
// names its own `code` (vault: 2 token or permission refused, 4 no such key, 1 bad token file).
Status ReportStatus(const Report& r);

// What diskseal needs in memory to encrypt: the hotzone buffer, the PBKDF memory cost and the
// measured base of the process (code, libraries, OpenSSL contexts, the LUKS2 metadata).
uint64_t MemoryNeed(const DoctorOptions& opts);
// Measured: peak RSS of `diskseal encrypt` (128 MiB image, pbkdf2, GNU time %M) is 48.8 MiB with
// the default 32 MiB hotzone and 19.9 MiB with a 4 MiB one: about 17 MiB besides the hotzone;
// rounded up. With Argon2id at 256 MiB the peak is 270 MiB (the KDF and the hotzone do not
// overlap, so adding both is an upper bound).
inline constexpr uint64_t kBaseRssBytes = 20u << 20;

}  // namespace ds::machine
