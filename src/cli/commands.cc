#include "cli/command.h"
#include "cli/commands.h"

namespace ds::cli {

Runner Dispatch(std::vector<std::pair<CLI::App*, Runner>> subs) {
  return [subs = std::move(subs)]() -> Status {
    for (const auto& [app, run] : subs)
      if (app->parsed()) return run();
    return InvalidArgument("no command given (see --help)");
  };
}

// The one table. Each entry's setup lives with its area (cmd_*.cc).
static const Command kCommands[] = {
    {"enable", "encrypt the machine's data volumes in place, keys escrowed (ADE's enable)", SetupEnable},
    {"disable", "decrypt the data volumes enable encrypted, back to plaintext", SetupDisable},
    {"status", "encryption status of the machine in ADE's words (--json)", SetupStatus},
    {"format", "create a new LUKS2 volume (header and keyslot) on a device", SetupFormat},
    {"encrypt", "encrypt a device in place, data kept, crash-safe (detached header)", SetupEncrypt},
    {"decrypt", "decrypt a device in place back to plaintext, crash-safe (detached header, or header at the start exported to --header NEWFILE)", SetupDecrypt},
    {"reencrypt", "replace the volume key (and optionally cipher, sector size) in place, crash-safe", SetupReencrypt},
    {"resume", "finish an interrupted in-place operation", SetupResume},
    {"recover", "rebuild a lost detached header from the vault alone (header and key escrowed by encrypt/enable)", SetupRecover},
    {"dump", "show a volume's LUKS2 header (--json: stable schema)", SetupDump},
    {"test-key", "check a passphrase against a volume's keyslots", SetupTestKey},
    {"keyslot", "add, remove, change or list keyslots", SetupKeyslot},
    {"token", "import, export or remove LUKS2 tokens", SetupToken},
    {"header", "back up or restore a volume's LUKS2 header", SetupHeader},
    {"repair", "rewrite a damaged header copy from the intact one", SetupRepair},
    {"import", "write plaintext from a file into a volume's data segment", SetupImport},
    {"export", "write a volume's decrypted data to a file or stdout", SetupExport},
    {"open", "open a volume: /dev/mapper/NAME (kernel) or /run/diskseal/NAME (userspace)", SetupOpen},
    {"close", "close a volume opened with open (also cleans up after a crash)", SetupClose},
    {"list", "list open volumes (kernel and userspace)", SetupList},
    {"benchmark", "measure PBKDF and cipher speed on this machine", SetupBenchmark},
    {"vault", "run the key vault, manage its tokens, use it from scripts", SetupVault},
    {"doctor", "check the machine before encrypting: what would fail, why, and what to do", SetupDoctor},
};

std::span<const Command> CommandTable() { return kCommands; }

}  // namespace ds::cli
