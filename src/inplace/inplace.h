// One in-place operation on one device, in the order that keeps the device safe at every instant:
//
//   1. FormatAndEscrow  the new header, with the encryption already recorded in it, made in a temp
//                       file (the device is only read: it may stay mounted); then, with a vault,
//                       the passphrase (and what rebuilds a detached header) escrowed, read back and
//                       verified against that temp header before anything is placed.
//      InitDecrypt      instead, for a volume encrypted already: decryption recorded in its header.
//   2. PlaceHeader      the escrowed temp header goes to its place: a rename for a file (the header
//                       file either does not exist or tells the truth), a two-step copy for a
//                       header device (the secondary copy first, the primary's first 4 KiB last).
//   3. RunOperation     the operation the header records, to its end or to a stop: online under the
//                       volume's live dm mapping (online/dm_online.h), in the userspace daemon that
//                       serves the volume (fuse/online_control.h), or offline (engine/engine.h).
//   4. EscrowFinalHeader  the finished header replaces in the vault the one escrowed at step 1.
//
// Callers: `encrypt`/`decrypt`/`reencrypt`/`resume` (src/cli/cmd_engine.cc) and `enable`/`disable`/
// `resume --all` (src/machine/enable.cc, also the boot-time unit). Each step is a separate public
// function so a caller records its own progress between them (machine/state.h) and repeats at
// most the step under way after a crash. What differs between callers (how a passphrase is asked,
// which command continues an interrupted run) stays with them: keys come in as values or through
// a callback, messages naming a command are passed in.
//
// Ownership: every pointer and reference is borrowed and must outlive the call. Keys are only
// ever held in SecureBuffer.
// Threading: call from one thread; RunOperation's engine starts worker threads and joins them
// before it returns. `stop` may be set from a signal handler or another thread.
// Preconditions: the caller holds the device's claim (io/device_claim.h) for steps 2 and 3 (with
// the live mapping and its helper allowed when it runs online); step 1 on a mounted device needs no
// exclusive claim (it only reads the device).
#pragma once

#include <atomic>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <ostream>
#include <string>

#include "engine/reencrypt_state.h"
#include "fuse/run_dir.h"
#include "io/block_device.h"
#include "luks2/volume.h"
#include "util/progress.h"
#include "util/secure_buffer.h"
#include "util/status.h"
#include "vault/client.h"

namespace ds::inplace {

// digest id -> volume key, borrowed (engine/engine.h's shape).
using KeyMap = std::map<int, const SecureBuffer*>;

// --- 1. format + init to a temp header, escrow and verify -----------------------------------

struct FormatRequest {
  std::string device;       // the plaintext data device (block device or image file)
  std::string temp_header;  // where the header is made; replaced if it exists, removed on error
  // Cipher, key size, pbkdf, label, uuid ...; offset_sectors is forced to 0 (detached header).
  // sector_size 0: with `device_mounted` the largest power of two up to the filesystem's own I/O
  // unit (at most 4096), so that the mounted filesystem keeps working on the mapping; otherwise
  // Format's choice.
  luks2::FormatOptions format;
  engine::Resilience resilience = engine::Resilience::kChecksum;
  std::string resilience_hash;  // checksum resilience's hash; empty: engine::DefaultChecksumHash()
  // The device stays mounted and in use: it is opened read-only and shared. Otherwise it is
  // opened for writing and exclusively, which fails while anything holds it.
  bool device_mounted = false;
  // Choose sector_size (when 0) for an online run as described above; `device_mounted` implies it.
  bool sector_for_online = false;
  // The new passphrase, asked for once the device passed its checks (so that a wrong device is
  // refused before anyone is prompted). Required.
  std::function<Result<SecureBuffer>()> passphrase;
  // Escrow (step 1b), when there is a vault: the passphrase and, with `escrow_header`, the header
  // secret. The vault is the borrowed `vault`, else the one `connect` makes (called once the
  // device passed its checks, before the passphrase is asked); neither: no escrow.
  vault::VaultClient* vault = nullptr;
  std::function<Result<std::unique_ptr<vault::VaultClient>>()> connect;
  bool escrow_header = true;  // a detached header: the vault alone can rebuild it
  // The passphrase secret's name for the new volume's LUKS UUID (known only once formatted).
  std::function<std::string(const std::string& luks_uuid)> secret_name;
  std::string kek, kek_alg = "RSA-OAEP";  // wrap the escrowed secrets with this vault key
};

struct Formatted {
  std::string uuid;          // the new volume's LUKS UUID
  SecureBuffer volume_key;   // the new (final) volume key
  int digest = 0;            // its digest id in the header
  std::string secret_id;     // the escrowed passphrase secret (with version); "" without a vault
};


// Probes the device, gets the passphrase, and makes `r.temp_header` for `r.device` with the encryption initialised (engine::InitEncrypt) and
// the device binding recorded, then escrows and verifies when `r.vault` is set. Refuses a device
// that already is LUKS (kBusy) or whose size is not a multiple of 512. On any error the temp
// header is removed and the device was never written. Logs the escrow line to `log`.
Result<Formatted> FormatAndEscrow(Env& env, const FormatRequest& r, std::ostream& log);

// Step 1b alone, for callers that make their header otherwise (the header at the start of the
// device, engine/datashift.h): escrows `pass` (and, when `detached`, the header secret) for the
// header in `temp_header` and pins it there. Error context says nothing was written to `device`;
// the caller removes the temp header. Logs "<device>: passphrase ... escrowed and verified as ID".
Result<std::string> EscrowNewHeader(Env& env, vault::VaultClient& client, const std::string& device,
                                    const std::string& temp_header, bool detached, const SecureBuffer& pass,
                                    const SecureBuffer& vk, const std::string& luks_uuid,
                                    const std::string& secret_name, const std::string& kek,
                                    const std::string& kek_alg, std::ostream& log);

// The other initialisation, for a volume that is encrypted already: decryption recorded in its
// detached header (engine::InitDecrypt; one header commit, nothing of the data written).
struct InitDecryptRequest {
  std::string device, header;  // the data device and its detached header
  engine::Resilience resilience = engine::Resilience::kChecksum;
  std::string resilience_hash;  // as in FormatRequest
  luks2::PbkdfOptions pbkdf;   // the digest iterations of the plaintext side
  // Unlocks the volume (called once, after the header's checks). Required.
  std::function<Result<luks2::Volume::Unlocked>(luks2::Volume&)> unlock;
  // Check the header's device binding (key-less before the unlock, with the key after) and record
  // the device's current one with the operation (engine/binding.h), as the CLI does.
  bool bind = true;
};

enum class DecryptInit {
  kInitialised,  // recorded now; `unlocked` holds the volume key
  kInProgress,   // an operation is recorded already (a run that stopped): run it
  kPlaintext,    // the header describes plaintext: nothing to decrypt
};

struct DecryptInitResult {
  DecryptInit state = DecryptInit::kInitialised;
  std::optional<luks2::Volume::Unlocked> unlocked;  // with kInitialised
};

Result<DecryptInitResult> InitDecrypt(Env& env, const InitDecryptRequest& r);

// --- 2. place the header ----------------------------------------------------------------------

// A private temp path for a header that goes to `header`: `header`.diskseal-new next to a header
// file (same filesystem, so the rename is atomic), or a 0600 file of this process in $TMPDIR for a
// header device.
std::string TempHeaderPath(const std::string& header, bool header_is_device);

// Puts the header made in `temp_header` (precondition: it exists and was escrowed) in place at
// `header`: renamed over a file path, or copied onto a header device (everything but the first
// 4 KiB, sync, those 4 KiB, sync; cut in between, the device holds the complete secondary copy),
// after which the temp file is removed. Nothing of the data device is written.
Status PlaceHeader(Env& env, const std::string& temp_header, const std::string& header, bool header_is_device);

// --- 3. run -------------------------------------------------------------------------------------

struct RunRequest {
  std::string device;  // data device, as the caller names it in messages
  std::string header;  // detached header, or "" (at the start of the device)
  // The keys: `known` when the caller has them (a header it just made), else `unlock` is called
  // with the loaded volume (after the key-less binding check) and returns every key the operation
  // needs, owned by the returned map. One of the two must be set.
  const KeyMap* known = nullptr;
  std::function<Result<std::map<int, SecureBuffer>>(luks2::Volume&)> unlock;
  // Checks on the loaded header before any key is derived (e.g. cryptsetup working on it); may be empty.
  std::function<Status(const luks2::Volume&)> check;
  // Stop after loading, checking and unlocking (nothing run): `encrypt --init-only`.
  bool prepare_only = false;
  uint64_t hotzone_bytes = 32u << 20;
  unsigned threads = 0;
  uint64_t stop_after = 0;
  const std::atomic<bool>* stop = nullptr;  // stop at the next commit point (kInterrupted)
  // Progress: to `progress_out` in `progress_mode`, labelled `progress_label` ("" = the mode's
  // name), with `observer` (may be empty) called at every update.
  std::ostream* progress_out = nullptr;
  Progress::Mode progress_mode = Progress::Mode::kNone;
  std::string progress_label;
  std::function<void(const Progress::Snapshot&)> observer;
  // Where the userspace views are (fuse/run_dir.h): a daemon serving this volume there runs the
  // operation itself. nullptr: not looked for.
  fuse::RunDir* run_dir = nullptr;
  // Say on `log` which way it runs online ("runs online under /dev/mapper/NAME", "... in the
  // daemon serving FILE").
  bool announce_online = false;
  // Run online under this mapping, named explicitly (it must exist), instead of the one found by
  // the header's UUID: an adopted device-mapper device (online/adopt.h), `device` its raw copy.
  std::string mapping;
};

struct RunOutcome {
  bool had_operation = false;          // the header recorded an operation when loaded
  engine::Mode mode = engine::Mode::kEncrypt;
  uint64_t data_size = 0, done_before = 0;  // of the state as loaded
  bool moves_data = false;             // a data shift (header at the start): never under a live mapping
  std::string mapping;                 // the live dm mapping it ran under, or ""
  bool in_daemon = false;              // ran in the userspace daemon
  bool loaded = false;                 // the header loaded (an error before this is Load's)
  bool started = false;                // the engine run began (an error after this is the run's)
  // The keys `unlock` returned (empty with `known`): the caller's for step 4 (the final segment's
  // key of a reencrypt is among them). Locked memory, wiped when the outcome is destroyed.
  std::map<int, SecureBuffer> unlocked;
};

// Loads the volume (writable), and when it records an operation: checks the binding key-less,
// runs `check`, gets the keys, checks the binding with them, and runs the operation to its end or
// to a stop; with no operation recorded, finishes a wipe left pending by a run cut short after its
// final commit and returns ok. Returns the engine's status (kInterrupted on a stop, with the
// engine's own message); `out` (may be null) is filled as far as the run got, also on error.
// The keys are held in `out` when given (else dropped on return).
// Precondition: the caller holds the device claim (see the file comment).
Status RunOperation(Env& env, const RunRequest& r, std::ostream& log, RunOutcome* out);

// --- 4. final header escrow -----------------------------------------------------------------------

struct FinalEscrowRequest {
  std::string device, header;  // a detached header
  // The vault: borrowed `vault`, else `connect` is called only when the escrow is pending (a
  // client that cannot be made then fails the step). Neither: `no_vault_note` is logged.
  vault::VaultClient* vault = nullptr;
  std::function<Result<std::unique_ptr<vault::VaultClient>>()> connect;
  // The final segment's key: found in `keys`, else the volume is unlocked with `pass`.
  const KeyMap* keys = nullptr;
  const SecureBuffer* pass = nullptr;
  // The run gave the volume a new key (reencrypt): the escrowed header no longer opens it, so the
  // pin is marked stale first (and escrowed again now when `vault` is set).
  bool new_volume_key = false;
  std::string no_vault_note;     // one line (without newline) logged when pending and no vault
  std::string failure_context;   // prefixed to an escrow failure (names the command that retries)
};

// After the operation finished: when the volume's pin says the vault holds only the header escrowed
// before the first data block, escrows the final header, verifies it and moves the pin (one header
// commit). Ok without a pin or when final already.
Status EscrowFinalHeader(Env& env, const FinalEscrowRequest& r, std::ostream& log);

}  // namespace ds::inplace
