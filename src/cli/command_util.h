// Small helpers shared by the commands that run a model (train, eval, sample).
#pragma once

#include <CLI/CLI.hpp>
#include <string>

namespace ampipe {

class Communicator;

// --threads N: the compute threads of the kernels and BLAS. Throws ampipe::Error for N < 1.
void set_threads(int threads);

// Prints `line` and a newline on stdout, on world rank 0 only, flushed at once.
void print_line(Communicator& world, const std::string& line);

// A validator for an unsigned flag (a seed): refuses a negative or non-integer value, which would
// otherwise wrap to 2^64 - 1 without a word.
CLI::Validator unsigned_integer();

}  // namespace ampipe
