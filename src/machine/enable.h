// `diskseal enable` / `disable` for data volumes: the machine-level workflow ADE's extension
// runs, built from diskseal's parts (discovery, the in-place engine, escrow, the userspace view
// or dm-crypt) and made resumable at every instant.
//
// Enable, per data volume (a mounted ext4/xfs/btrfs on a block device that is not /, /boot, swap,
// the resource disk, or already LUKS), each step recorded atomically in the state directory
// (machine/state.h) before the next begins:
//   planned -> (key file) unmounted -> escrowed -> header-placed -> encrypting -> encrypted
//   -> opened -> mounted -> configured
// Every step is idempotent, so a run after a crash, reboot or kill -9 repeats at most the step
// that was under way: the engine resumes from its own LUKS2 reencryption metadata, the open and
// the mount are checked against what the kernel has, the etc edits are keyed by volume.
// Disable is the reverse (disabling -> closed -> decrypting -> decrypted -> plain-mounted ->
// disabled).
//
// The OS volume (`enable --volume-type OS`, README "The OS volume"): root cannot be unmounted, so
// its mapping is made by the initramfs at the next boot, from the header on /boot:
//   planned -> (key file) escrowed [header made as a temp file on /boot, escrowed, verified]
//   -> header-placed [/etc/diskseal/initramfs.conf written and the initramfs rebuilt BEFORE the
//      header goes in place (a failed rebuild changes nothing); fstab and crypttab name the
//      mapping]  ... reboot (status: VMRestartPending) ...
//   -> encrypting [the boot-time unit, `resume --all`: / is on /dev/mapper/osencrypt, encrypted
//      online] -> encrypted -> configured.
// A power cut anywhere before the header is placed boots the old way (nothing changed); after it,
// every boot activates the mapping the header describes (packaging/initramfs-tools).
// No reboot when / is on diskseal's prepared linear mapping (the initramfs's 1:1 dm-linear
// /dev/mapper/osencrypt over the partition, dm UUID DISKSEAL-LINEAR-...): at header-placed that
// mapping is switched to the header's table (online::AdoptPreparedMapping, one load/suspend/
// resume) and encrypting runs in the same call; a table it may not switch ends VMRestartPending.
//
// One run at a time per machine: both take MachineLock on <state-dir>/lock.
// Threading: call from a single-threaded process (the userspace view forks its daemon); the
// engine uses worker threads internally and joins them before returning.
#pragma once

#include <atomic>
#include <functional>
#include <ostream>
#include <string>
#include <vector>

#include "engine/reencrypt_state.h"
#include "luks2/volume.h"
#include "machine/discovery.h"
#include "util/progress.h"
#include "util/status.h"
#include "vault/client.h"

namespace ds::machine {

// What the OS flow needs beyond the data volumes' options.
struct OsVolumeOptions {
  std::string name = "osencrypt";                  // the mapping, as ADE names it
  std::string header = "/boot/luks/osluksheader";  // on the separate /boot filesystem (ADE's path)
  std::string initramfs_conf;                      // default <etc>/diskseal/initramfs.conf
  // What the initramfs uses to fetch the key over the network (copied into it by the hook): the
  // vault's URL, a token FILE (the initramfs has no environment to take one from) and CA file.
  std::string vault_url, vault_token_file, vault_ca;
  // Rebuilds the initramfs of every installed kernel (update-initramfs -u -k all), its output on
  // `log`; an error names what failed. Required for the OS flow.
  std::function<Status(std::ostream& log)> rebuild_initramfs;
};

// Collaborators are borrowed: everything pointed to outlives the call.
struct EnableOptions {
  MachineRoot root;  // discovery reads here; fstab/crypttab are edited at root.Etc(...)
  std::string state_dir = "/var/lib/diskseal";
  std::string run_dir = "/run/diskseal";   // userspace views (fuse/run_dir.h)
  std::vector<std::string> only;           // mount points to act on; empty: every data volume
  engine::Resilience resilience = engine::Resilience::kChecksum;
  uint64_t hotzone_bytes = 32u << 20;
  unsigned threads = 0;
  luks2::PbkdfOptions pbkdf;               // for the keyslot of the generated passphrase
  bool userspace = false;                  // open through FUSE even where device-mapper exists
  bool offline = false;                    // unmount for the whole run even where online works
  vault::VaultClient* vault = nullptr;     // escrow when set
  std::string kek, kek_alg = "RSA-OAEP";   // wrap the escrowed passphrase with this vault key
  std::string secret_prefix;               // secret names: <prefix><LUKS uuid>; "" = diskseal-
  // The command line of this run without secrets (paths and names only): recorded in the lock for
  // other runs to name, and named after an interruption as the command that continues.
  std::string command = "diskseal enable";
  bool wait_for_lock = true;
  // Checks the machine before anything is changed (diskseal doctor): a non-ok Status stops the
  // run and is returned as is. Called under the lock with the discovered machine and the mount
  // points of the volumes this run is about to start, only when there are any (volumes already
  // under way passed it when they were started; resuming them must not be blocked by, say, the
  // files open on an encrypted volume). May be empty.
  std::function<Status(const Machine&, const std::vector<std::string>& starting)> preflight;
  Progress::Mode progress_mode = Progress::Mode::kNone;
  std::ostream* log = nullptr;             // messages and progress (stderr); required
  const std::atomic<bool>* stop = nullptr; // SIGINT/SIGTERM: stop at the engine's next commit
  // Test hook: the process stops itself (SIGSTOP) at the first engine commit at or past this
  // percent, with its state record written, so a test can kill -9 it at a known point without
  // depending on timing. -1: off.
  int freeze_at_percent = -1;
  // Test hook: SIGSTOP right after the record reaches this step (StepName), once. "": off.
  std::string freeze_at_step;
  OsVolumeOptions os;
};

// What a run did to one volume.
struct VolumeOutcome {
  std::string mountpoint, device, name;
  std::string header, key_file, secret_id;
  std::string plaintext;  // what is mounted now: /dev/mapper/NAME, a loop device, or the device
  std::string result;     // "Encrypted", "Decrypted", "VMRestartPending" (OS), or "skipped: <why>"
};

Result<std::vector<VolumeOutcome>> EnableDataVolumes(Env& env, const EnableOptions& o);
// The OS volume: from nothing to "VMRestartPending" (the header on /boot, the initramfs rebuilt),
// or, run again after the reboot (or by `resume --all`), on to Encrypted while the machine runs;
// on a prepared root (above) from nothing to Encrypted in one call, no reboot.
// Needs a vault (o.vault and o.os.vault_*): the key at boot comes from there (or a BEK volume).
Result<std::vector<VolumeOutcome>> EnableOsVolume(Env& env, const EnableOptions& o);
// The reverse, online (root decrypted under its mapping while the machine runs), then the boot
// configuration removed; the next boot mounts the plain partition. Nothing recorded: a note.
Result<std::vector<VolumeOutcome>> DisableOsVolume(Env& env, const EnableOptions& o);
Result<std::vector<VolumeOutcome>> DisableDataVolumes(Env& env, const EnableOptions& o);
// `diskseal resume --all` (the boot-time unit): carries on every volume the state directory
// records, and nothing else: an interrupted enable or disable continues (online where it can),
// and a finished volume whose plaintext is not open or mounted (a userspace view lost at reboot)
// is opened and mounted again. `o.only` and `o.preflight` are ignored. No records: nothing to do.
Result<std::vector<VolumeOutcome>> ResumeRecordedVolumes(Env& env, const EnableOptions& o);

// Why discovery's data volume `v` cannot be encrypted by enable, or "" when it can.
std::string NotEncryptableReason(const Volume& v);

// Whether enable with `o` encrypts the data volume `v` without unmounting it at all: online
// (device-mapper, neither --offline nor --userspace) and mounted from a foreign linear dm device
// (an LVM logical volume) that it adopts (online/adopt.h). Reads the live kernel's dm state.
bool EncryptsWithoutUnmount(const Volume& v, const EnableOptions& o);

}  // namespace ds::machine
