// Reachability in a task list, for the tests of the dependency rules (test_schedules.cpp,
// test_paired.cpp).
#pragma once

#include <cstddef>
#include <vector>

#include "pipeline/task_list.h"

namespace ampipe::testing {

// Whether task j is ordered before task i through stream order and waits.
inline bool ordered_before(const std::vector<StageTask>& tasks, size_t i, size_t j) {
  std::vector<bool> seen(tasks.size(), false);
  std::vector<size_t> todo{i};
  while (!todo.empty()) {
    const size_t k = todo.back();
    todo.pop_back();
    if (k == j) return true;
    if (seen[k]) continue;
    seen[k] = true;
    for (int w : tasks[k].waits) todo.push_back(static_cast<size_t>(w));
    for (size_t p = k; p-- > 0;)
      if (tasks[p].stream() == tasks[k].stream()) {
        todo.push_back(p);
        break;
      }
  }
  return false;
}

}  // namespace ampipe::testing
