// The communicator over every process of this run.
//
// make_world_communicator() returns the MPI world (initialising MPI) when the process was started
// by an MPI launcher, else a SelfCommunicator, so the single-process binary never needs mpirun and
// never touches MPI. Launcher detection (launched_by_mpi): any of OMPI_COMM_WORLD_SIZE (Open MPI's
// mpirun), PMIX_RANK (PMIx: Open MPI 4/5, srun --mpi=pmix), PMI_RANK / PMI_SIZE (MPICH / Intel
// hydra, srun --mpi=pmi2), MV2_COMM_WORLD_SIZE (MVAPICH) or SLURM_STEP_NUM_TASKS (a task of an
// srun step) is set. SLURM_NTASKS alone is not a launch: an sbatch script's own shell has it too.
// AMPIPE_COMM=mpi or AMPIPE_COMM=self overrides the detection (AMPIPE_COMM=auto or unset: detect).
// Collective over the world when it returns the MPI world. `timeout_seconds` bounds every collective
// of the MPI world and of the groups split from it (MpiCommunicator::Options::timeout_seconds: past
// it the job ends naming the rank that did not arrive); it must be > 0 on either backend.
#pragma once

#include <memory>
#include <string>

#include "comm/communicator.h"

namespace ampipe {

std::unique_ptr<Communicator> make_world_communicator(double timeout_seconds = 600.0);

// The environment variable that shows an MPI launcher started this process, or "" if none.
std::string launched_by_mpi();

}  // namespace ampipe
