/* hd.h: GD_HD marks the inline arithmetic that the CPU and the CUDA
 * backends share (cubic.h, seg_math.h, dmlp_math.h): a host and device
 * function under nvcc, a plain one under the C compiler. */
#ifndef GD_HD_H
#define GD_HD_H

#ifdef __CUDACC__
#define GD_HD __host__ __device__
#else
#define GD_HD
#endif

#endif
