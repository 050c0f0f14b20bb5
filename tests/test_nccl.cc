// test_nccl.cc: the NCCL backend of comm.h on device buffers, under mpirun
// with one GPU per rank or as a single process (MPI as a singleton). Every
// operation's result is checked against the sum the ranks' inputs imply. On
// a machine without a CUDA GPU every test but the first skips and says so:
// there the backend is only compiled and linked.
#include <cuda_runtime.h>
#include <gtest/gtest.h>
#define OMPI_SKIP_MPICXX 1
#include <mpi.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <string>
#include <vector>

#include "comm.h"

namespace {

bool have_gpu() {
  int n = 0;
  return cudaGetDeviceCount(&n) == cudaSuccess && n > 0;
}

#define NEED_GPU()                                                                         \
  if (!have_gpu())                                                                         \
  GTEST_SKIP() << "no CUDA GPU on this machine: the NCCL backend is compiled and linked, " \
                  "but cannot run here"

// A device copy of a host vector, freed at scope end.
template <typename T>
struct Dev {
  T *p = nullptr;
  size_t n = 0;
  explicit Dev(const std::vector<T> &h) : n(h.size()) {
    EXPECT_EQ(cudaMalloc(&p, n * sizeof(T)), cudaSuccess);
    EXPECT_EQ(cudaMemcpy(p, h.data(), n * sizeof(T), cudaMemcpyHostToDevice), cudaSuccess);
  }
  ~Dev() { cudaFree(p); }
  std::vector<T> host() const {
    std::vector<T> h(n);
    EXPECT_EQ(cudaMemcpy(h.data(), p, n * sizeof(T), cudaMemcpyDeviceToHost), cudaSuccess);
    return h;
  }
};

// Small integers and halves: every sum below is exact in fp32.
float value(size_t i, int rank) { return (float)(i % 97) * 0.5f + (float)rank; }

// Ranks on this node and GPUs this rank sees: more ranks than GPUs (and no
// CUDA_VISIBLE_DEVICES giving each its own) is the shared-GPU case.
bool gpu_shared() {
  int n = 0, local = 1;
  if (cudaGetDeviceCount(&n) != cudaSuccess || n == 0) return false;
  MPI_Comm node;
  MPI_Comm_split_type(MPI_COMM_WORLD, MPI_COMM_TYPE_SHARED, 0, MPI_INFO_NULL, &node);
  MPI_Comm_size(node, &local);
  MPI_Comm_free(&node);
  return local > n && getenv("CUDA_VISIBLE_DEVICES") == nullptr;
}

class Nccl : public ::testing::Test {
 protected:
  comm_t *c = nullptr;
  void SetUp() override {
    NEED_GPU();
    if (gpu_shared())
      GTEST_SKIP() << "more ranks than GPUs on this node: NCCL needs one GPU per rank";
    ASSERT_EQ(comm_nccl_init(&c, 60), STATUS_OK) << status_message();
    ASSERT_STREQ(c->ops->name, "nccl");
  }
  void TearDown() override { comm_free(c); }
  float rank_sum() const { return (float)(c->size * (c->size - 1) / 2); }
};

TEST(NcclNoGpu, InitWithoutGpuNamesTheMissingGpu) {
  if (have_gpu()) GTEST_SKIP() << "a GPU is present: this test is for machines without one";
  comm_t *c = nullptr;
  EXPECT_EQ(comm_nccl_init(&c, 10), STATUS_COMM);
  EXPECT_EQ(c, nullptr);
  EXPECT_NE(std::string(status_message()).find("GPU"), std::string::npos) << status_message();
}

// Two ranks on one GPU: every rank fails at once, naming both ranks, where
// NCCL itself would only say "invalid usage".
TEST(NcclShared, RanksSharingAGpuAreNamed) {
  NEED_GPU();
  if (!gpu_shared())
    GTEST_SKIP() << "each rank has its own GPU: run more ranks than GPUs for this test";
  comm_t *c = nullptr;
  EXPECT_EQ(comm_nccl_init(&c, 10), STATUS_COMM);
  EXPECT_EQ(c, nullptr);
  EXPECT_NE(std::string(status_message()).find("local ranks 0 and 1 both use the GPU"),
            std::string::npos)
      << status_message();
}

TEST_F(Nccl, AllreduceBlockingAndNonBlocking) {
  const size_t n = (1u << 20) + 13;
  std::vector<float> h(n);
  for (size_t i = 0; i < n; i++) h[i] = value(i, c->rank);
  Dev<float> d(h);
  ASSERT_EQ(c->ops->allreduce(c, d.p, n), STATUS_OK) << status_message();
  std::vector<float> once = d.host();
  for (size_t i = 0; i < n; i++)
    ASSERT_EQ(once[i], (float)c->size * value(i, 0) + rank_sum()) << "at " << i;
  comm_req *q = nullptr;
  ASSERT_EQ(c->ops->iallreduce(c, d.p, n, &q), STATUS_OK) << status_message();
  bool done = false;
  for (int k = 0; k < 1000000 && !done; k++) ASSERT_EQ(c->ops->test(c, q, &done), STATUS_OK);
  ASSERT_EQ(c->ops->wait(c, q), STATUS_OK) << status_message();
  std::vector<float> twice = d.host();
  for (size_t i = 0; i < n; i++) ASSERT_EQ(twice[i], (float)c->size * once[i]) << "at " << i;
}

TEST_F(Nccl, AllreduceF64) {
  std::vector<double> h = {1e-300, 1.0 + c->rank, -3.25, 1e300 / 64};
  Dev<double> d(h);
  ASSERT_EQ(c->ops->allreduce_f64(c, d.p, h.size()), STATUS_OK) << status_message();
  std::vector<double> r = d.host();
  EXPECT_EQ(r[0], 1e-300 * c->size);
  EXPECT_EQ(r[1], (double)c->size + rank_sum());
  EXPECT_EQ(r[2], -3.25 * c->size);
  EXPECT_EQ(r[3], 1e300 / 64 * c->size);
}

TEST_F(Nccl, BroadcastFromTheLastRank) {
  const size_t n = 100003;
  std::vector<float> h(n);
  for (size_t i = 0; i < n; i++) h[i] = value(i, c->rank) * (c->rank == c->size - 1 ? 1.0f : -7.0f);
  Dev<float> d(h);
  ASSERT_EQ(c->ops->broadcast(c, d.p, n * sizeof(float), c->size - 1), STATUS_OK)
      << status_message();
  std::vector<float> r = d.host();
  for (size_t i = 0; i < n; i++) ASSERT_EQ(r[i], value(i, c->size - 1)) << "at " << i;
}

TEST_F(Nccl, ReduceScatterThenAllgatherIsTheAllreduce) {
  const int per = 65537;
  const size_t n = (size_t)per * (size_t)c->size;
  std::vector<float> h(n);
  for (size_t i = 0; i < n; i++) h[i] = value(i, c->rank);
  Dev<float> in(h);
  Dev<float> out(std::vector<float>((size_t)per, -1.0f));
  std::vector<int> counts((size_t)c->size, per);
  ASSERT_EQ(c->ops->reduce_scatter(c, in.p, out.p, counts.data()), STATUS_OK) << status_message();
  std::vector<float> mine = out.host();
  size_t base = (size_t)per * (size_t)c->rank;
  for (size_t i = 0; i < (size_t)per; i++)
    ASSERT_EQ(mine[i], (float)c->size * value(base + i, 0) + rank_sum()) << "at " << i;
  // Every slice but this rank's own is garbage before the all-gather.
  std::vector<float> g(n, 12345.0f);
  for (size_t i = 0; i < (size_t)per; i++) g[base + i] = mine[i];
  Dev<float> all(g);
  ASSERT_EQ(c->ops->allgather(c, all.p, counts.data()), STATUS_OK) << status_message();
  std::vector<float> r = all.host();
  for (size_t i = 0; i < n; i++)
    ASSERT_EQ(r[i], (float)c->size * value(i, 0) + rank_sum()) << "at " << i;
}

TEST_F(Nccl, UnequalSlicesAreRefused) {
  if (c->size < 2) GTEST_SKIP() << "one rank: every slice split is equal";
  std::vector<int> counts((size_t)c->size, 4);
  counts[0] = 5;
  Dev<float> d(std::vector<float>(64, 0.0f));
  EXPECT_EQ(c->ops->allgather(c, d.p, counts.data()), STATUS_ARG);
  EXPECT_NE(std::string(status_message()).find("equal"), std::string::npos) << status_message();
}

TEST_F(Nccl, AllgatherBytesAndBarrier) {
  std::vector<char> mine(37, (char)('a' + c->rank % 26));
  Dev<char> dm(mine);
  Dev<char> all(std::vector<char>(mine.size() * (size_t)c->size, 0));
  ASSERT_EQ(c->ops->allgather_bytes(c, dm.p, all.p, mine.size()), STATUS_OK) << status_message();
  std::vector<char> r = all.host();
  for (int k = 0; k < c->size; k++)
    for (size_t i = 0; i < mine.size(); i++)
      ASSERT_EQ(r[(size_t)k * mine.size() + i], (char)('a' + k % 26));
  ASSERT_EQ(c->ops->barrier(c), STATUS_OK) << status_message();
  float dummy = 0;
  float *shared = &dummy;
  EXPECT_EQ(comm_alloc_shared(c, 1024, &shared), STATUS_OK);
  EXPECT_EQ(shared, nullptr) << "device buffers are never in a host shared-memory window";
}

void CUDART_CB sleep_on_stream(void *us) { usleep(*static_cast<useconds_t *>(us)); }

// A collective queued behind 2.5 s of other work on the stream passes a 1 s
// deadline: the wait returns STATUS_TIMEOUT naming the context without
// waiting for the stream, and the communicator refuses further calls (it is
// aborted when freed).
TEST_F(Nccl, WaitPastTheDeadlineTimesOut) {
  if (c->size != 1) GTEST_SKIP() << "one rank only: the other ranks' collectives would hang";
  c->timeout_s = 1;
  comm_set_context(c, "step 7 bucket 2");
  static useconds_t busy = 2500000;
  ASSERT_EQ(
      cudaLaunchHostFunc(static_cast<cudaStream_t>(comm_nccl_stream(c)), sleep_on_stream, &busy),
      cudaSuccess);
  Dev<float> d(std::vector<float>(1024, 1.0f));
  auto t0 = std::chrono::steady_clock::now();
  EXPECT_EQ(c->ops->allreduce(c, d.p, 1024), STATUS_TIMEOUT);
  double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  EXPECT_GE(s, 1.0);
  EXPECT_LT(s, 2.4) << "the wait ended only when the stream did";
  EXPECT_NE(std::string(status_message()).find("within 1 s (step 7 bucket 2)"), std::string::npos)
      << status_message();
  EXPECT_EQ(c->ops->barrier(c), STATUS_COMM);
  EXPECT_NE(std::string(status_message()).find("failed earlier"), std::string::npos)
      << status_message();
  comm_req *q = nullptr;
  EXPECT_EQ(c->ops->iallreduce(c, d.p, 1024, &q), STATUS_COMM);
  EXPECT_EQ(q, nullptr);
}

}  // namespace

int main(int argc, char **argv) {
  MPI_Init(&argc, &argv);
  ::testing::InitGoogleTest(&argc, argv);
  int rc = RUN_ALL_TESTS();
  int worst = 0;
  MPI_Allreduce(&rc, &worst, 1, MPI_INT, MPI_MAX, MPI_COMM_WORLD);
  MPI_Finalize();
  return worst;
}
