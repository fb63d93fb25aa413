// One micro-batch's backward beside the next micro-batch's forward as one task list on the two
// streams (--overlap-moe-expert-parallel-comm; docs/ARCHITECTURE.md, "Paired micro-batches").
//
// A forward on a slow link waits for its all-to-alls while the compute stream idles, and a backward
// keeps the compute stream busy while the link idles. Merged, one pass's computation runs while the
// other's all-to-alls are in flight. Each pass keeps its own list (pipeline/task_list.h: AMPipe's
// chunks, either scope) and its own order on each stream; the merge only decides, stream by stream,
// which pass's next task goes first. The two passes share nothing but the parameters, which neither
// writes (the backward accumulates gradients, the forward reads values), so the results are those of
// the two passes run one after the other, bit for bit.
#pragma once

#include <vector>

#include "pipeline/task_list.h"

namespace ampipe {

// The stages of a backward list (GradReduce, ExpertsWgrad and the backward TP collectives included);
// the others are forward ones.
bool is_backward_stage(Stage stage);

// The tasks of `backward` (one micro-batch) and `forward` (the next) in one list, each task's waits
// renumbered into it. The order comes from a greedy list schedule over predicted seconds (one per
// task of each list, any unit): of the (at most four) next tasks of the two passes on the two
// streams, the one that could start first goes next, ties going to the one with the longer path to
// the end of its pass, then to the backward. Deterministic: every rank that merges the same lists
// with the same seconds issues its collectives in the same order (the caller's duty: the seconds
// must not differ between ranks). Throws ampipe::Error for sizes that differ or a negative or
// non-finite time.
std::vector<StageTask> paired_tasks(const std::vector<StageTask>& backward,
                                    const std::vector<double>& backward_seconds,
                                    const std::vector<StageTask>& forward,
                                    const std::vector<double>& forward_seconds);

// Checks a paired list: waits point to earlier tasks of the other stream, and each pass, as the
// tasks of its stages in list order, satisfies check_task_list's rule for its PassShape, counting
// orderings that go through the other pass's tasks. Throws ampipe::Error naming the first task
// whose input is not ordered before it.
void check_paired_task_list(const std::vector<StageTask>& tasks, const ChunkPlan& plan,
                            const PassShape& backward_pass, const PassShape& forward_pass);

}  // namespace ampipe
