// Whole-file writes that never leave a half-written file behind, and whole-file reads.
//
// write_file_atomically writes into `path + ".tmp.<pid>"` in the same directory, flushes and
// fsyncs it, renames it over `path` and fsyncs the directory. A reader of `path` therefore sees
// either the old contents or the complete new ones, also after a crash or power loss. On any
// failure (an exception from `write`, an I/O error, a full disk) the temporary file is removed, the
// old `path` is left untouched, and an ampipe::Error naming the path and the OS error is thrown
// (an exception thrown by `write` itself is rethrown unchanged). Only if the final fsync of the
// directory fails is the new file already in place when the Error is thrown.
// Thread-safety: two threads of one process must not write the same path at the same time (they
// would share the temporary name); distinct paths are fine.
#pragma once

#include <cstddef>
#include <functional>
#include <ostream>
#include <string>
#include <string_view>

namespace ampipe {

// Calls write(stream) and commits what it wrote to `path` atomically. Setting the stream's badbit
// or failbit (e.g. a failed write) counts as a failure.
void write_file_atomically(const std::string& path, const std::function<void(std::ostream&)>& write);
// Same, for contents already in memory.
void write_file_atomically(const std::string& path, std::string_view bytes);

// Makes the entries of directory `dir` (renames, removals, new files) durable: fsync of the
// directory. A file system that cannot fsync a directory (EINVAL) is accepted; any other failure
// throws ampipe::Error naming the directory and the OS error.
void fsync_directory(const std::string& dir);

// Writes all n bytes to the file descriptor, retrying short writes and EINTR; returns 0, or the
// errno of the failure (ENOSPC, EFBIG, ...) for the caller to report.
int write_all(int fd, const void* data, size_t n);

// Readies an output file before any work starts, so a long run never fails at its end for want of a
// directory: creates the missing directories above `path` (as --save creates its own) and checks
// that a file can be created there (a probe file, removed at once) and, if `path` exists, that it is
// a writable file. `flag` names the option in the error ("--trace"); throws ampipe::Error naming
// the flag, the path and the OS error. Writes nothing at `path` itself.
void prepare_output_file(const std::string& flag, const std::string& path);

// The whole contents of `path`; throws ampipe::Error naming the path and the OS error if it is
// missing or unreadable.
std::string read_file(const std::string& path);

}  // namespace ampipe
