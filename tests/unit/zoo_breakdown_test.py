#!/usr/bin/env python3
"""bench/zoo_breakdown.py: ncu CSV and torch.profiler trace parsing, kernel classification (every one of Loom's
own kernels in kernels/cuda included) and the per-class table. Fixtures in tests/data/zoo_breakdown are the
shapes the tools write: ncu --csv --print-units base with the program's output and ==PROF== lines before the
header, and a Chrome trace with CPU, runtime, memset and memcpy events beside the kernels.

usage: zoo_breakdown_test.py SOURCE_DIR
"""
import glob
import json
import os
import re
import subprocess
import sys
import tempfile
import unittest

SOURCE = os.path.abspath(sys.argv.pop(1) if len(sys.argv) > 1 else os.path.join(os.path.dirname(__file__), "../.."))
sys.path.insert(0, os.path.join(SOURCE, "bench"))
import zoo_breakdown as zb  # noqa: E402

DATA = os.path.join(SOURCE, "tests/data/zoo_breakdown")


def read(name):
    with open(os.path.join(DATA, name)) as f:
        return f.read()


class ParseTest(unittest.TestCase):
    def test_ncu_csv_gives_every_launch_in_order_in_ms(self):
        kernels = zb.parse_ncu_csv(read("ncu_step.csv"))
        self.assertEqual(len(kernels), 9)
        self.assertEqual(kernels[0][0], "loom::cuda::(anonymous namespace)::embedding_forward_kernel<__nv_bfloat16>")
        self.assertAlmostEqual(kernels[0][1], 5.472e-3)
        self.assertEqual(kernels[2][0], "nvjet_tst_128x256_64x4_1x2_h_bz_coopA_NNT")
        self.assertAlmostEqual(kernels[5][1], 1.87056)  # "1,870,560" ns: thousands separators dropped
        self.assertAlmostEqual(sum(ms for _, ms in kernels), 2.395872)

    def test_ncu_units_and_other_metrics(self):
        header = read("ncu_step.csv").splitlines()[5]
        row = lambda i, metric, unit, value: (f'"{i}","1","p","h","void k{i}(int)","1","7","(1, 1, 1)","(1, 1, 1)",'
                                              f'"0","9.0","Command line profiler metrics","{metric}","{unit}","{value}"')
        text = "\n".join([header, row(1, "gpu__time_duration.sum", "usecond", "2.5"),
                          row(1, "dram__bytes.sum", "byte", "4,096"), row(0, "gpu__time_duration.sum", "ns", "500")])
        self.assertEqual(zb.parse_ncu_csv(text), [("k0", 5e-4), ("k1", 2.5e-3)])
        with self.assertRaisesRegex(ValueError, "unknown unit 'cycle'"):
            zb.parse_ncu_csv("\n".join([header, row(0, "gpu__time_duration.sum", "cycle", "7")]))

    def test_ncu_output_without_csv_is_an_error(self):
        with self.assertRaisesRegex(ValueError, "no ncu CSV header"):
            zb.parse_ncu_csv("==PROF== Connected to process 1\n==WARNING== No kernels were profiled.\n")

    def test_chrome_trace_keeps_only_kernels(self):
        kernels = zb.parse_chrome_trace(json.loads(read("torch_step.trace.json")))
        self.assertEqual(len(kernels), 10)
        self.assertEqual(kernels[0], ("triton_poi_fused_add_embedding_0", 4.25e-3))
        self.assertTrue(kernels[3][0].startswith("pytorch_flash::flash_fwd_kernel<Flash_fwd_kernel_traits<64,"))
        self.assertTrue(kernels[9][0].endswith("float const*, float const*>"))  # the parameter list dropped
        self.assertAlmostEqual(sum(ms for _, ms in kernels), 1.40875)

    def test_normalise(self):
        self.assertEqual(zb.normalise("void a::(anonymous namespace)::k<(a::M)1, float>(int, f<(b)2>*)"),
                         "a::(anonymous namespace)::k<(a::M)1, float>")
        self.assertEqual(zb.normalise("triton_red_fused_sum_5"), "triton_red_fused_sum_5")


class ClassifyTest(unittest.TestCase):
    def test_fixture_kernels_land_in_their_classes(self):
        loom = [zb.classify(n) for n, _ in zb.parse_ncu_csv(read("ncu_step.csv"))]
        self.assertEqual(loom, ["embedding", "LayerNorm", "GEMM", "attention", "GEMM", "cross-entropy", "reduction",
                                "reduction", "optimizer"])
        peer = [zb.classify(n) for n, _ in zb.parse_chrome_trace(json.loads(read("torch_step.trace.json")))]
        self.assertEqual(peer, ["embedding", "LayerNorm", "GEMM", "attention", "elementwise", "cross-entropy",
                                "LayerNorm", "reduction", "embedding", "optimizer"])

    def test_peer_names(self):
        cases = {
            "cudnn_generated_fort_native_sdpa_sm90_flash_fprop_wgmma_f16_knob_3_64x128x128_4x1x1_kernel0_0":
                "attention",
            "sm90_xmma_gemm_bf16bf16_bf16f32_f32_tn_n_tilesize128x128x64_warpgroupsize1x1x1_execute_segment_k_off_"
            "kernel__5x_cublas": "GEMM",
            # cuBLASLt's bias-gradient epilogue as its own kernel (seen on an H100 beside Loom's weight gradients)
            "void epilogue::globalKernelBgradAB_v2<8, 128, __nv_bfloat16, __nv_bfloat16, float>(int)": "GEMM",
            "void at::native::(anonymous namespace)::vectorized_layer_norm_kernel<c10::BFloat16, float>(int, float)":
                "LayerNorm",
            "void at::native::(anonymous namespace)::GammaBetaBackwardCUDAKernel<float, float>(long)": "LayerNorm",
            "void at::native::(anonymous namespace)::cunn_SoftMaxForward<4, float, float, float>(float*)":
                "cross-entropy",
            "void at::native::(anonymous namespace)::nll_loss_forward_reduce_cuda_kernel_2d<float, float, long>()":
                "cross-entropy",
            "void at::native::indexSelectLargeIndex<float, long, unsigned int, 2, 2, -2, true>(int)": "embedding",
            "void at::native::vectorized_elementwise_kernel<4, at::native::GeluCUDAKernelImpl, at::detail::Array<"
            "char*, 2> >(int, at::native::GeluCUDAKernelImpl, at::detail::Array<char*, 2>)": "elementwise",
            "void at::native::reduce_kernel<512, 1, at::native::ReduceOp<float, at::native::func_wrapper_t<float, "
            "at::native::sum_functor<float, float, float>>, unsigned int, float, 4, 4> >(int)": "reduction",
            "triton_per_fused__to_copy_add_native_layer_norm_native_layer_norm_backward_7": "LayerNorm",
            "triton_red_fused__log_softmax__to_copy_nll_loss_forward_9": "cross-entropy",
            "triton_poi_fused__to_copy_gelu_gelu_backward_3": "elementwise",
            "void cub::CUB_200200_900_NS::DeviceRadixSortOnesweepKernel<int, int>(int)": "embedding",
        }
        for name, expected in cases.items():
            self.assertEqual(zb.classify(name), expected, name)
        self.assertEqual(zb.classify("some_kernel_nobody_named"), "other")

    def test_every_loom_kernel_has_a_class(self):
        """The __global__ functions in kernels/cuda: none lands in "other", and the families land where the
        breakdown's reader expects them."""
        names = set()
        for path in glob.glob(os.path.join(SOURCE, "kernels/cuda/*.cu*")):
            with open(path) as f:
                names |= set(re.findall(r"__global__\s+(?:void\s+)?(?:__launch_bounds__\([^)]*\)\s*)?(?:void\s+)?"
                                        r"(\w+)\s*\(", f.read()))
        self.assertGreater(len(names), 20, "the kernel scan found too few __global__ functions")
        families = [("layernorm_", "LayerNorm"), ("flash_", "attention"), ("softmax_", "attention"),
                    ("cross_entropy", "cross-entropy"), ("adamw", "optimizer"), ("embedding_", "embedding"),
                    ("sum_squares", "reduction"), ("gelu_", "elementwise")]
        for name in sorted(names):
            qualified = f"void loom::cuda::(anonymous namespace)::{name}<__nv_bfloat16>(float *, long)"
            got = zb.classify(qualified)
            self.assertNotEqual(got, "other", f"Loom kernel {name} matches no class in zoo_breakdown.CLASSES")
            for prefix, expected in families:
                if name.startswith(prefix):
                    self.assertEqual(got, expected, name)


class TableTest(unittest.TestCase):
    def test_table_sums_classes_and_totals(self):
        loom = zb.parse_ncu_csv(read("ncu_step.csv"))
        peer = zb.parse_chrome_trace(json.loads(read("torch_step.trace.json")))
        lines = zb.table(loom, peer, "Loom", "torch.compile")
        self.assertEqual(lines[0], "| class | Loom ms | torch.compile ms | Loom/torch.compile | Loom kernels | "
                                   "torch.compile kernels |")
        rows = {line.split(" | ")[0].lstrip("| "): line for line in lines[2:]}
        self.assertEqual(rows["GEMM"], "| GEMM | 0.05 | 0.04 | 1.13× | 2 | 1 |")
        self.assertEqual(rows["cross-entropy"], "| cross-entropy | 1.87 | 0.90 | 2.08× | 1 | 1 |")
        self.assertEqual(rows["elementwise"], "| elementwise | 0.00 | 0.01 | 0.00× | 0 | 1 |")
        self.assertEqual(rows["**total**"], "| **total** | **2.40** | **1.41** | **1.70×** | 9 | 10 |")
        self.assertNotIn("other", rows)

    def test_cli_table_of_kernel_lists(self):
        with tempfile.TemporaryDirectory() as tmp:
            loom, peer = os.path.join(tmp, "loom.json"), os.path.join(tmp, "peer.json")
            zb.write_kernels(loom, "Nsight Compute", "Loom", ["bench"], zb.parse_ncu_csv(read("ncu_step.csv")))
            zb.write_kernels(peer, "torch.profiler", "eager", ["gpt2.py"], [("mystery_kernel", 0.5)])
            out = subprocess.run([sys.executable, os.path.join(SOURCE, "bench/zoo_breakdown.py"), "table", loom, peer],
                                 capture_output=True, text=True, check=True).stdout
        self.assertIn("| other | 0.00 | 0.50 | 0.00× | 0 | 1 |", out)
        self.assertIn('eager "other", longest: `mystery_kernel` 0.50 ms', out)


if __name__ == "__main__":
    unittest.main()
