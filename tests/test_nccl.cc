// test_nccl.cc: the NCCL backend of comm.h on device buffers (one process,
// MPI as a singleton). On a machine without a CUDA GPU every test skips and
// says so: there the backend is only compiled and linked.
#include <cuda_runtime.h>
#include <gtest/gtest.h>
#define OMPI_SKIP_MPICXX 1
#include <mpi.h>

#include <vector>

#include "comm.h"

namespace {

bool have_gpu() {
  int n = 0;
  return cudaGetDeviceCount(&n) == cudaSuccess && n > 0;
}

#define NEED_GPU()                                                                          \
  if (!have_gpu())                                                                          \
  GTEST_SKIP() << "no CUDA GPU on this machine: the NCCL backend is compiled and linked, " \
                  "but cannot run here"

TEST(Nccl, InitWithoutGpuNamesTheMissingGpu) {
  if (have_gpu()) GTEST_SKIP() << "a GPU is present: this test is for machines without one";
  comm_t *c = nullptr;
  EXPECT_EQ(comm_nccl_init(&c, 10), STATUS_COMM);
  EXPECT_NE(std::string(status_message()).find("GPU"), std::string::npos) << status_message();
}

TEST(Nccl, CollectivesOnDeviceBuffers) {
  NEED_GPU();
  comm_t *c = nullptr;
  ASSERT_EQ(comm_nccl_init(&c, 60), STATUS_OK) << status_message();
  const size_t n = 1 << 20;
  std::vector<float> host(n);
  for (size_t i = 0; i < n; i++) host[i] = (float)(i % 97) * 0.5f;
  float *d = nullptr;
  ASSERT_EQ(cudaMalloc(&d, n * sizeof(float)), cudaSuccess);
  cudaMemcpy(d, host.data(), n * sizeof(float), cudaMemcpyHostToDevice);
  ASSERT_EQ(c->ops->allreduce(c, d, n), STATUS_OK) << status_message();
  comm_req *q = nullptr;
  ASSERT_EQ(c->ops->iallreduce(c, d, n, &q), STATUS_OK);
  ASSERT_EQ(c->ops->wait(c, q), STATUS_OK);
  std::vector<float> back(n);
  cudaMemcpy(back.data(), d, n * sizeof(float), cudaMemcpyDeviceToHost);
  for (size_t i = 0; i < n; i += 4099) EXPECT_EQ(back[i], host[i] * (float)c->size * c->size);
  ASSERT_EQ(c->ops->broadcast(c, d, n * sizeof(float), 0), STATUS_OK);
  ASSERT_EQ(c->ops->barrier(c), STATUS_OK);
  std::vector<int> counts(c->size, (int)(n / c->size));
  float *out = nullptr;
  cudaMalloc(&out, n * sizeof(float));
  ASSERT_EQ(c->ops->reduce_scatter(c, d, out, counts.data()), STATUS_OK);
  ASSERT_EQ(c->ops->allgather(c, d, counts.data()), STATUS_OK);
  cudaFree(out);
  cudaFree(d);
  comm_free(c);
}

}  // namespace

int main(int argc, char **argv) {
  MPI_Init(&argc, &argv);
  ::testing::InitGoogleTest(&argc, argv);
  int rc = RUN_ALL_TESTS();
  MPI_Finalize();
  return rc;
}
