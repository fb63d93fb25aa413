// What the multi-rank training tests share (tests/parallel): a directory every rank of the world
// uses, holding a small text corpus, and the small model and schedule they train.
#pragma once

#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <string>

#include "comm/communicator.h"
#include "train/trainer.h"

namespace ampipe::testing {

// Rank 0 chooses and creates TempDir()/<prefix><name>_<pid> (emptied first), writes corpus.txt
// there (200 copies of one verse) and, if `also` is given, calls it with the directory; every rank
// returns the directory after a barrier. Collective over `world`.
template <typename Also>
std::string shared_corpus_dir(Communicator& world, const std::string& prefix, const std::string& name,
                              Also also) {
  std::string dir =
      (std::filesystem::path(::testing::TempDir()) / (prefix + name + "_" + std::to_string(::getpid())))
          .string();
  world.broadcast_bytes(dir, 0);
  if (world.rank() == 0) {
    std::filesystem::remove_all(dir);
    std::filesystem::create_directories(dir);
    std::string text;
    for (int i = 0; i < 200; ++i)
      text += "And the LORD spake unto Moses, saying, Speak unto the children of Israel. ";
    std::ofstream(dir + "/corpus.txt") << text;
    also(dir);
  }
  world.barrier();
  return dir;
}
inline std::string shared_corpus_dir(Communicator& world, const std::string& prefix,
                                     const std::string& name) {
  return shared_corpus_dir(world, prefix, name, [](const std::string&) {});
}

// A 2-block model (d = 16, N = 16, E = 4 of width 24, top-2) with `heads` attention heads (Mixtral:
// `query_groups` KV heads), trained 12 iterations on dir/corpus.txt, validated every 6.
inline TrainOptions small_train_options(const std::string& dir, bool mixtral, int64_t heads,
                                        int64_t query_groups) {
  TrainOptions o;
  if (mixtral) {
    o.model.set_family("mixtral");
    o.model.num_query_groups = query_groups;
  }
  o.model.max_seq_len = 16;
  o.model.hidden_size = 16;
  o.model.num_attention_heads = heads;
  o.model.num_layers = 2;
  o.model.num_experts = 4;
  o.model.ffn_hidden_size = 24;
  o.model.top_k = 2;
  o.lr = LrSchedule{3e-3, 3e-4, 2, 1};
  o.train_iters = 12;
  o.eval_interval = 6;
  o.eval_iters = 1;
  o.log_interval = 1;
  o.data_path = {dir + "/corpus.txt"};
  return o;
}

}  // namespace ampipe::testing
