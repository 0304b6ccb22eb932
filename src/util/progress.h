// Progress of long work, as users and scripts see it: on a terminal a bar with percent, MiB/s and
// ETA (redrawn at most 5 times a second); otherwise, when enabled, one JSON line per second:
//   {"event":"progress","op":"export","done":N,"total":N,"percent":P,"mib_s":R,"eta_s":S}
// and a final line with "event":"done". Thread-safe: Advance() may be called from any thread.
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <functional>
#include <mutex>
#include <ostream>
#include <string>

namespace ds {

class Progress {
 public:
  enum class Mode { kNone, kBar, kJson };
  // Auto mode: a bar when `tty`, JSON lines otherwise.
  static Mode AutoMode(bool tty, bool json_requested);

  Progress(std::ostream* out, Mode mode, std::string op, uint64_t total, uint64_t done = 0);
  ~Progress();
  void Advance(uint64_t bytes);
  void Finish();  // the work is complete: prints the final line ("done") once
  // Destroyed without Finish() (stopped or failed), the final line says "stopped".

  // What an observer sees: the same figures the bar and the JSON lines show.
  struct Snapshot {
    uint64_t done = 0, total = 0;
    double mib_s = 0, eta_s = 0;
  };
  // Called on every Advance, on the advancing thread, whatever the mode (enable records the rate
  // for `status` in other processes). Set before the work starts; the observer does its own
  // throttling and must not call back into this object.
  void SetObserver(std::function<void(const Snapshot&)> fn) { observer_ = std::move(fn); }

 private:
  void Print(const char* event);  // "progress", "done" or "stopped"
  Snapshot Take() const;

  std::ostream* out_;
  Mode mode_;
  std::string op_;
  uint64_t total_;
  uint64_t start_done_;
  std::atomic<uint64_t> done_;
  std::chrono::steady_clock::time_point start_, last_;
  std::mutex mu_;
  bool finished_ = false;
  std::function<void(const Snapshot&)> observer_;
};

}  // namespace ds
