#include "util/progress.h"

#include <cstdio>
#include <string_view>

#include <nlohmann/json.hpp>

namespace ds {

Progress::Mode Progress::AutoMode(bool tty, bool json_requested) {
  if (json_requested) return Mode::kJson;
  return tty ? Mode::kBar : Mode::kJson;
}

Progress::Progress(std::ostream* out, Mode mode, std::string op, uint64_t total, uint64_t done)
    : out_(out), mode_(mode), op_(std::move(op)), total_(total), start_done_(done), done_(done),
      start_(std::chrono::steady_clock::now()), last_(start_) {}

// Destroyed without Finish(): the work stopped (a signal, --stop-after) or failed. The last line
// says so, never "done".
Progress::~Progress() {
  std::lock_guard l(mu_);
  if (finished_ || mode_ == Mode::kNone) return;
  finished_ = true;
  Print("stopped");
}

void Progress::Advance(uint64_t bytes) {
  done_ += bytes;
  if (observer_) observer_(Take());
  if (mode_ == Mode::kNone) return;
  auto now = std::chrono::steady_clock::now();
  std::lock_guard l(mu_);
  auto gap = mode_ == Mode::kBar ? std::chrono::milliseconds(200) : std::chrono::milliseconds(1000);
  if (now - last_ < gap) return;
  last_ = now;
  Print("progress");
}

void Progress::Finish() {
  std::lock_guard l(mu_);
  if (finished_ || mode_ == Mode::kNone) return;
  finished_ = true;
  Print("done");
}

Progress::Snapshot Progress::Take() const {
  Snapshot s;
  s.done = done_.load();
  s.total = total_;
  const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count();
  s.mib_s = secs > 0 ? double(s.done - start_done_) / (1 << 20) / secs : 0;
  s.eta_s = s.mib_s > 0 ? double(total_ - std::min(s.done, total_)) / (1 << 20) / s.mib_s : 0;
  return s;
}

void Progress::Print(const char* event) {
  const bool final = std::string_view(event) != "progress";
  const Snapshot s = Take();
  const uint64_t done = s.done;
  const double mib_s = s.mib_s, eta = s.eta_s;
  const double pct = total_ ? 100.0 * double(done) / double(total_) : 100.0;
  if (mode_ == Mode::kJson) {
    nlohmann::ordered_json j{{"event", event}, {"op", op_},
                             {"done", done}, {"total", total_},
                             {"percent", double(int(pct * 10)) / 10}, {"mib_s", int(mib_s)},
                             {"eta_s", int(eta)}};
    *out_ << j.dump() << "\n" << std::flush;
    return;
  }
  char line[160];
  const int width = 30;
  int filled = int(pct / 100 * width);
  std::string bar(size_t(filled), '#');
  bar.resize(width, '.');
  std::snprintf(line, sizeof line, "\r%s [%s] %5.1f%% %7.1f MiB/s ETA %02d:%02d:%02d", op_.c_str(),
                bar.c_str(), pct, mib_s, int(eta) / 3600, int(eta) / 60 % 60, int(eta) % 60);
  *out_ << line << (final ? "\n" : "") << std::flush;
}

}  // namespace ds
