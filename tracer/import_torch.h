// tracer/import_torch.h: `glake-trace import --torch SNAPSHOT.pickle -o OUT.json.gz`: a PyTorch memory
// snapshot (torch.cuda.memory._dump_snapshot) becomes a glake trace, so that a PyTorch user learns what
// glake would save without a GPU.
//
// The conversion is scripts/torch_snapshot_to_json.py (plain python3, no torch: the pickle holds only
// builtin types; see the script for what becomes what); this command finds it (GLAKE_SCRIPTS, then
// next to the executable: ../scripts, ../../scripts, ../share/glake/scripts, then the source tree it was
// built from), runs it with python3 (GLAKE_PYTHON overrides), reads the trace it wrote back (so a bad
// conversion is caught here, with the file and position) and says what to do next.
#pragma once

#include <string>
#include <vector>

namespace glake::tracer {

// The script's path, or "" (with the places searched in *searched).
std::string find_script(const std::string& name, std::string* searched);

int import_command(const std::vector<std::string>& args);

}  // namespace glake::tracer
