// All schemas of the halo operator library, one comment each. CPU and CUDA kernels are registered in
// ops_cpu.cpp / ops_cuda.cpp; fake (meta) implementations for torch.compile are in python/halo_ext/_meta.py.
#include <torch/library.h>

TORCH_LIBRARY(halo, m) {
  // y = scale * (x o signs) * H_n along the last dim (transpose: scale * (x * H_n^T) o signs, the exact inverse
  // for the default orthonormal scale 1/sqrt(n)); n = block (block-diagonal transform) or the last dim when 0.
  m.def("hadamard(Tensor x, float? scale=None, int block=0, Tensor? signs=None, bool transpose=False) -> Tensor");
  // (q, scale): absmax quantization to int8/float8 per tensor, per row or per block of the last dim; x ~ q * scale.
  m.def("quantize(Tensor x, ScalarType dtype, str granularity=\"tensor\", int block=0) -> (Tensor, Tensor)");
  // q * scale in dtype (default float32), for the granularity quantize() used.
  m.def("dequantize(Tensor q, Tensor scale, ScalarType? dtype=None, str granularity=\"tensor\", int block=0) -> Tensor");
  // (q, qt, scale): hadamard() then per-tensor quantize() in one fused pass pair; qt = q^T of the [rows, dim] view
  // (the K-major layout the backward GEMMs need); q / qt are empty when not requested; amax skips the reduction.
  m.def("hadamard_quantize(Tensor x, ScalarType dtype, float? hadamard_scale=None, int block=0, Tensor? signs=None, "
        "bool transpose=False, bool want_q=True, bool want_qt=False, Tensor? amax=None) -> (Tensor, Tensor, Tensor)");
  // HALO-2's E_Y [tokens, channels] -> (q_rot, scale_rot, qt, scale_t): q_rot = Q(R E_Y) per tensor with R the
  // token rotation I (x) H_block diag(signs) (orthonormal), qt = Q(E_Y)^T with one scale per channel ([channels]);
  // tokens a multiple of block (1..256, power of two; 1 = no rotation) and, with qt, of 16; an output not wanted is
  // empty.
  m.def("ey_quantize(Tensor ey, ScalarType dtype, int block, Tensor? signs=None, bool want_rot=True, "
        "bool want_t=True) -> (Tensor, Tensor, Tensor, Tensor)");
  // out[M,N] = (scale_a o a[M,K]) (scale_b o b[N,K])^T (+ bias[N]); int8 x int8 or float8 x float8_e4m3; scales
  // float32 per tensor ([1]) or per row ([M] / [N]); out_dtype defaults to bfloat16. row_hadamard = b > 1 (a power
  // of two dividing M, no bias): out = diag(scale_a) (I (x) H_b) (a b^T) diag(scale_b), H_b the +-1 Sylvester matrix.
  m.def("qgemm(Tensor a, Tensor b, Tensor scale_a, Tensor scale_b, ScalarType? out_dtype=None, Tensor? bias=None, "
        "int row_hadamard=0) -> Tensor");
  // HALO forward GEMM: rotate x [..,K] and w [N,K] along K, quantize each per tensor, 8-bit GEMM; w may be given
  // pre-rotated and pre-quantized (8-bit dtype, with w_scale).
  m.def("hadamard_qgemm(Tensor x, Tensor w, ScalarType dtype, Tensor? w_scale=None, Tensor? bias=None, "
        "ScalarType? out_dtype=None, int block=0, Tensor? signs=None) -> Tensor");
  // One HaloLinear forward (x2 [M, K], weight [N, K]): Q(X H_m) (padded to padded_tokens rows, transposed copy when
  // want_xqt) and Q(W H_m) (transposed copy when want_wqt) unless given, then y = Q(X H_m) Q(W H_m)^T + bias [M, N];
  // H_m of order rotation_block (0 = K) at levels 1/2, none at level 0. Returns (y, wq, ws, wqt, qx, qxt, sx) with
  // empty tensors for what was given (wq/ws, qx/sx) or not asked for; weight is not read (may be None) with wq.
  m.def("linear_forward(Tensor x2, Tensor? weight, Tensor? bias, Tensor? wq, Tensor? ws, Tensor? qx, Tensor? sx, "
        "int level, ScalarType qdtype, int padded_tokens, int rotation_block, "
        "bool want_wqt, bool want_xqt) -> (Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor)");
  // One HaloLinear backward from grad_output ey [M, N] and the saved 8-bit operands (qxt = Q(X H_m)^T [K, Mp],
  // wqt = Q(W H_m)^T [K, N]): (grad_x [M, K], grad_w [N, K] in gw_dtype, grad_bias [N] in gb_dtype), each empty when
  // not asked for (need_gx / need_gw / gb_dtype None). Level 2 rotates E_Y along tokens with R_b = token_rot
  // ([b, b], b = token_block, fused into the quantization with token_signs when b <= 256); wgrad_per_channel scales
  // Q(E_Y)^T of the weight gradient per output channel.
  m.def("linear_backward(Tensor ey, Tensor? qxt, Tensor? sx, Tensor? wqt, Tensor? ws, Tensor? token_rot, "
        "Tensor? token_signs, int level, ScalarType gdtype, int token_block, int padded_tokens, int rotation_block, "
        "bool wgrad_per_channel, bool need_gx, bool need_gw, ScalarType? gw_dtype=None, "
        "ScalarType? gb_dtype=None) -> (Tensor, Tensor, Tensor)");
  // Block-quantized two-shot collectives (kernels/qcomm.h): quantize the `world` chunks of flat x (chunk c =
  // x[c*chunk, (c+1)*chunk), zero padded) into out = [world * chunk_bytes] uint8 (codes + fp32 block scales);
  // chunk `skip` (the caller's own chunk, -1 = none) is neither quantized nor written.
  m.def("qcomm_pack_into(Tensor x, Tensor(a!) out, int world, int chunk, int block, ScalarType dtype, "
        "int skip=-1) -> ()");
  // Dequantize the packed chunks, sum in float32 in list order, times post_scale; out = the requantized packed chunk
  // (uint8) or the first out.numel() sums (float32/float16/bfloat16). With own (the owner's flat float input slice,
  // <= one chunk of elements, zeros past its end) the sum takes own unquantized at position own_index of the list
  // instead of dequantizing chunks[own_index] (which is not read).
  m.def("qcomm_reduce_into(Tensor[] chunks, Tensor(a!) out, int block, ScalarType dtype, float post_scale=1.0, "
        "Tensor? own=None, int own_index=-1) -> ()");
  // Dequantize the packed chunks (chunk logical elements each) into the flat float out (out.numel() <= n * chunk).
  m.def("qcomm_unpack_into(Tensor[] chunks, Tensor(a!) out, int chunk, int block, ScalarType dtype) -> ()");
  // qcomm_pack_into storing chunk c into outs[c] (the peer-memory path passes the owners' buffers: NVLink stores);
  // outs[skip] is not written (-1 = none).
  m.def("qcomm_pack_scatter(Tensor x, Tensor(a!)[] outs, int chunk, int block, ScalarType dtype, int skip=-1) -> ()");
  // qcomm_reduce_into with the requantized packed chunk stored into every tensor of outs (every peer's gather slot);
  // own / own_index as in qcomm_reduce_into; deq (optional, float, <= a chunk of elements, may alias own) receives
  // the dequantized result, bit-identical to qcomm_unpack_into of that packed chunk.
  m.def("qcomm_reduce_broadcast(Tensor[] chunks, Tensor(a!)[] outs, int block, ScalarType dtype, "
        "float post_scale=1.0, Tensor? own=None, int own_index=-1, Tensor(b!)? deq=None) -> ()");
  // qcomm_reduce_broadcast of rank `rank`'s chunk (own = its input slice; its dequantized values into out) fused with
  // the unpack of the other ranks' reduced chunks: gathered[s] (rank s's chunk, written by rank s) is dequantized
  // into out tile by tile once flags[s, tile] == epoch; this rank sets peer_flags[i][tile] = epoch after storing
  // each tile into outs[i]. epoch grows by one per call on the same (zero-initialized) flags, on every rank.
  m.def("qcomm_reduce_broadcast_unpack(Tensor[] chunks, Tensor(a!)[] outs, Tensor[] gathered, Tensor flags, "
        "Tensor(b!)[] peer_flags, int epoch, Tensor(c!) out, int chunk, int block, ScalarType dtype, "
        "float post_scale, Tensor own, int rank) -> ()");
}
