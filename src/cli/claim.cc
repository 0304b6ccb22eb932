#include "cli/claim.h"

namespace ds::cli {

Result<std::vector<DeviceClaim>> ClaimVolume(Env& env, const DeviceArgs& d, ClaimMode mode,
                                             bool writes_device) {
  std::vector<DeviceClaim> held;
  DS_ASSIGN_OR_RETURN(DeviceClaim dev, DeviceClaim::Acquire(d.device, {mode, writes_device}));
  held.push_back(std::move(dev));
  if (!d.header.empty() && env.Exists(d.header)) {
    DS_ASSIGN_OR_RETURN(DeviceClaim hdr, DeviceClaim::Acquire(d.header, {mode, false}));
    held.push_back(std::move(hdr));
  }
  return held;
}

}  // namespace ds::cli
