// netc's oneDNN convolution kernels, called from XLA programs through the XLA FFI (jax.ffi):
// forward, backward-data and backward-weights of an N-D grouped convolution, float32 or bfloat16
// (all three operands of one call in the same type; oneDNN accumulates bfloat16 in float32).
// Built on first use by compiler/kernels/onednn.py against the onednn-cpu-gomp wheel.
//
// Layouts: activations are logically N×C×spatial, weights (O, C/g, k...). By default (layout 2)
// XLA hands over and takes back activations channels-last in memory (N×spatial×C; the custom
// call's operand layouts, compiler/kernels/onednn.py channels_last) and the primitives run on
// that layout as it is, as PyTorch's channels_last convolutions do: no reorders of activations.
// With N×C×spatial memory (layout 0 and 1) oneDNN picks its own formats (`any`: blocked ones,
// e.g. nChw8c on AVX2) and the operands are reordered when they differ — giving it N×C×spatial
// itself ran CIFAR ResNet-18's 3×3 64-channel layer 2.3x slower. Weights are reordered to
// oneDNN's choice each call. Primitives are built once per shape and cached
// (a mutex guards the cache; executing a primitive is thread-safe); scratchpads and reorder
// buffers belong to the calling thread.
#include <cstdint>
#include <cstring>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <unordered_map>
#include <vector>

#include "oneapi/dnnl/dnnl.hpp"
#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;
using dnnl::memory;
using Dims = memory::dims;

namespace {

enum Kind : int64_t { kForward = 0, kBackwardData = 1, kBackwardWeights = 2 };

struct Geometry {
  Dims src, wei, dst, strides, dilates, pad_l, pad_r;
  int64_t groups = 1;
  // the activations: 0 N×C×spatial in memory, oneDNN's choice inside; 1 the same, the forward
  // channel-blocked inside; 2 channels-last in memory (N×spatial×C) and inside
  int64_t layout = 0;
  bool bias = false;  // backward-weights also gives the bias gradient (float32: Σ dy per channel)
  memory::data_type type = memory::data_type::f32;  // of all three operands
};

dnnl::engine& Engine() {
  static dnnl::engine eng(dnnl::engine::kind::cpu, 0);
  return eng;
}

memory::format_tag PlainTag(size_t rank) {
  using t = memory::format_tag;
  switch (rank) {
    case 2: return t::ab;
    case 3: return t::abc;
    case 4: return t::abcd;
    case 5: return t::abcde;
    case 6: return t::abcdef;
  }
  return t::undef;
}

// oneDNN's channel-blocked activation format (nCw8c, nChw8c, nCdhw8c): what its AVX2 backward
// kernels use; reordering netc's N×C×spatial to it and back is cheaper than to the channels-last
// layout oneDNN's forward picks by itself
memory::format_tag BlockedTag(size_t rank) {
  using t = memory::format_tag;
  switch (rank) {
    case 3: return t::aBc8b;
    case 4: return t::aBcd8b;
    case 5: return t::aBcde8b;
  }
  return t::undef;
}

// N×spatial×C in memory (nwc, nhwc, ndhwc) for the logical N×C×spatial dims
memory::format_tag ChannelsLastTag(size_t rank) {
  using t = memory::format_tag;
  switch (rank) {
    case 3: return t::acb;
    case 4: return t::acdb;
    case 5: return t::acdeb;
  }
  return t::undef;
}

memory::desc Md(const Dims& d, memory::format_tag tag, memory::data_type type) {
  return memory::desc(d, type, tag);
}

// The user's weights (O, C/g, k...) as oneDNN sees them: (g, O/g, C/g, k...) when grouped.
Dims WeightDims(const Geometry& g) {
  if (g.groups == 1) return g.wei;
  Dims d = g.wei;
  d[0] /= g.groups;
  d.insert(d.begin(), g.groups);
  return d;
}

struct Prepared {
  dnnl::primitive prim;
  memory::desc user[3], want[3];  // inputs 0, 1 and the output, as given and as oneDNN wants
  int arg[3];
  memory::desc scratch;
  memory::desc bias;  // the bias gradient's, when backward-weights gives it
  std::string impl;  // oneDNN's name for the implementation it chose
};

struct Cache {
  std::mutex mu;
  std::map<std::string, std::shared_ptr<Prepared>> items;
};

std::string Key(Kind kind, const Geometry& g) {
  std::string k = std::to_string(kind) + "|" + std::to_string(g.groups) + "|" +
                  std::to_string(g.bias) + "|" +
                  std::to_string(g.layout) + "|" + std::to_string(static_cast<int>(g.type));
  for (const Dims* d : {&g.src, &g.wei, &g.dst, &g.strides, &g.dilates, &g.pad_l, &g.pad_r}) {
    k += "|";
    for (auto v : *d) k += std::to_string(v) + ",";
  }
  return k;
}

// `fixed`: the primitive runs on the user's channels-last activations as they are (layout 2);
// else on oneDNN's choice of formats.
std::shared_ptr<Prepared> Prepare(Kind kind, const Geometry& g, bool fixed) {
  using namespace dnnl;
  auto& eng = Engine();
  const bool last = g.layout == 2;
  const auto act_tag = last ? ChannelsLastTag(g.src.size()) : PlainTag(g.src.size());
  const auto any = memory::format_tag::any;
  const auto t = g.type;
  const auto src_user = Md(g.src, act_tag, t), dst_user = Md(g.dst, act_tag, t);
  const auto wdims = WeightDims(g);
  const auto wei_user = Md(wdims, PlainTag(wdims.size()), t);
  const auto src_md = fixed ? src_user : Md(g.src, any, t);
  const auto dst_md = fixed ? dst_user : Md(g.dst, any, t);
  const auto wei_md = Md(wdims, any, t);
  primitive_attr attr;
  attr.set_scratchpad_mode(scratchpad_mode::user);
  const auto prop = kind == kForward ? prop_kind::forward_inference : prop_kind::forward_training;
  const auto bias_md = Md({g.dst[1]}, memory::format_tag::a, memory::data_type::f32);
  auto make_fwd = [&](const memory::desc& s, const memory::desc& d) {
    if (g.bias) {
      return convolution_forward::primitive_desc(eng, prop, algorithm::convolution_direct, s,
                                                 wei_md, bias_md, d, g.strides, g.dilates,
                                                 g.pad_l, g.pad_r, attr);
    }
    return convolution_forward::primitive_desc(eng, prop, algorithm::convolution_direct, s,
                                               wei_md, d, g.strides, g.dilates, g.pad_l,
                                               g.pad_r, attr);
  };
  auto fwd = make_fwd(src_md, dst_md);
  const auto blocked = BlockedTag(g.src.size());
  if (kind == kForward && g.layout == 1 && blocked != memory::format_tag::undef) {
    try {  // kept only when a JIT kernel takes the blocked layout (not a reference one)
      auto b = make_fwd(Md(g.src, blocked, t), Md(g.dst, blocked, t));
      const std::string impl = b.impl_info_str();
      if (impl.find("jit") != std::string::npos || impl.find("brg") != std::string::npos) fwd = b;
    } catch (const dnnl::error&) {
    }
  }
  auto p = std::make_shared<Prepared>();
  if (kind == kForward) {
    p->user[0] = src_user, p->user[1] = wei_user, p->user[2] = dst_user;
    p->want[0] = fwd.src_desc(), p->want[1] = fwd.weights_desc(), p->want[2] = fwd.dst_desc();
    p->arg[0] = DNNL_ARG_SRC, p->arg[1] = DNNL_ARG_WEIGHTS, p->arg[2] = DNNL_ARG_DST;
    p->scratch = fwd.scratchpad_desc();
    p->impl = fwd.impl_info_str();
    p->prim = convolution_forward(fwd);
  } else if (kind == kBackwardData) {
    auto bwd = convolution_backward_data::primitive_desc(
        eng, algorithm::convolution_direct, src_md, wei_md, dst_md, g.strides, g.dilates,
        g.pad_l, g.pad_r, fwd, attr);
    p->user[0] = dst_user, p->user[1] = wei_user, p->user[2] = src_user;
    p->want[0] = bwd.diff_dst_desc(), p->want[1] = bwd.weights_desc();
    p->want[2] = bwd.diff_src_desc();
    p->arg[0] = DNNL_ARG_DIFF_DST, p->arg[1] = DNNL_ARG_WEIGHTS, p->arg[2] = DNNL_ARG_DIFF_SRC;
    p->scratch = bwd.scratchpad_desc();
    p->impl = bwd.impl_info_str();
    p->prim = convolution_backward_data(bwd);
  } else {
    auto bwd = g.bias ? convolution_backward_weights::primitive_desc(
                            eng, algorithm::convolution_direct, src_md, wei_md, bias_md, dst_md,
                            g.strides, g.dilates, g.pad_l, g.pad_r, fwd, attr)
                      : convolution_backward_weights::primitive_desc(
                            eng, algorithm::convolution_direct, src_md, wei_md, dst_md,
                            g.strides, g.dilates, g.pad_l, g.pad_r, fwd, attr);
    if (g.bias) p->bias = bwd.diff_bias_desc();
    p->user[0] = src_user, p->user[1] = dst_user, p->user[2] = wei_user;
    p->want[0] = bwd.src_desc(), p->want[1] = bwd.diff_dst_desc();
    p->want[2] = bwd.diff_weights_desc();
    p->arg[0] = DNNL_ARG_SRC, p->arg[1] = DNNL_ARG_DIFF_DST, p->arg[2] = DNNL_ARG_DIFF_WEIGHTS;
    p->scratch = bwd.scratchpad_desc();
    p->impl = bwd.impl_info_str();
    p->prim = convolution_backward_weights(bwd);
  }
  return p;
}

// Channels-last activations run as they are where oneDNN has an optimised kernel for them;
// where only a reference one takes them (an older ISA, an unusual shape) the operands are
// reordered to oneDNN's own choice instead.
std::shared_ptr<Prepared> Prepare(Kind kind, const Geometry& g) {
  if (g.layout != 2) return Prepare(kind, g, false);
  try {
    auto p = Prepare(kind, g, true);
    if (p->impl.rfind("ref", 0) != 0) return p;
  } catch (const dnnl::error&) {  // no implementation at all takes them as they are
  }
  return Prepare(kind, g, false);
}

std::shared_ptr<Prepared> Lookup(Kind kind, const Geometry& g) {
  static Cache cache;
  const std::string key = Key(kind, g);
  std::lock_guard<std::mutex> lock(cache.mu);
  auto it = cache.items.find(key);
  if (it != cache.items.end()) return it->second;
  auto p = Prepare(kind, g);
  cache.items.emplace(key, p);
  return p;
}

// Per-thread buffers, grown as needed: the scratchpad and the reordered operands.
std::vector<char>& Buffer(int which, size_t bytes) {
  thread_local std::vector<char> buffers[4];
  auto& b = buffers[which];
  if (b.size() < bytes) b.resize(bytes);
  return b;
}

void Run(Kind kind, const Geometry& g, void* in0, void* in1, void* out, void* bias) {
  auto p = Lookup(kind, g);
  auto& eng = Engine();
  dnnl::stream s(eng);
  void* ptr[3] = {in0, in1, out};
  dnnl::memory user[3], used[3];
  std::unordered_map<int, dnnl::memory> args;
  for (int i = 0; i < 3; ++i) {
    user[i] = dnnl::memory(p->user[i], eng, ptr[i]);
    if (p->want[i] == p->user[i]) {
      used[i] = user[i];
    } else {
      used[i] = dnnl::memory(p->want[i], eng, Buffer(i, p->want[i].get_size()).data());
      if (i < 2) dnnl::reorder(user[i], used[i]).execute(s, user[i], used[i]);
    }
    args[p->arg[i]] = used[i];
  }
  if (bias != nullptr) args[DNNL_ARG_DIFF_BIAS] = dnnl::memory(p->bias, eng, bias);
  if (size_t bytes = p->scratch.get_size()) {
    args[DNNL_ARG_SCRATCHPAD] = dnnl::memory(p->scratch, eng, Buffer(3, bytes).data());
  }
  p->prim.execute(s, args);
  if (!(p->want[2] == p->user[2])) dnnl::reorder(used[2], user[2]).execute(s, used[2], user[2]);
  s.wait();
}

Dims ToDims(ffi::Span<const int64_t> s) { return Dims(s.begin(), s.end()); }
template <typename B>
Dims Shape(const B& b) {
  auto d = b.dimensions();
  return Dims(d.begin(), d.end());
}

ffi::Error Call(Kind kind, Dims a, Dims b, Dims c, void* in0, void* in1, void* out, void* bias,
                ffi::Span<const int64_t> strides, ffi::Span<const int64_t> dilation,
                ffi::Span<const int64_t> pad_lo, ffi::Span<const int64_t> pad_hi,
                int64_t groups, int64_t layout, memory::data_type type) {
  Geometry g;
  g.type = type;
  g.groups = groups;
  g.layout = layout;
  g.bias = bias != nullptr;
  if (kind == kForward) g.src = a, g.wei = b, g.dst = c;
  if (kind == kBackwardData) g.dst = a, g.wei = b, g.src = c;
  if (kind == kBackwardWeights) g.src = a, g.dst = b, g.wei = c;
  g.strides = ToDims(strides);
  g.pad_l = ToDims(pad_lo);
  g.pad_r = ToDims(pad_hi);
  for (auto v : dilation) g.dilates.push_back(v - 1);  // oneDNN counts the gaps
  try {
    Run(kind, g, in0, in1, out, bias);
  } catch (const dnnl::error& e) {
    return ffi::Error(ffi::ErrorCode::kInternal, std::string("oneDNN: ") + e.what());
  }
  return ffi::Error::Success();
}

#define NETC_ATTRS                                      \
  ffi::Span<const int64_t> strides, ffi::Span<const int64_t> dilation, \
      ffi::Span<const int64_t> pad_lo, ffi::Span<const int64_t> pad_hi, int64_t groups, \
      int64_t layout
#define NETC_PASS strides, dilation, pad_lo, pad_hi, groups, layout

template <Kind kind>
ffi::Error Impl(ffi::AnyBuffer a, ffi::AnyBuffer b, ffi::Result<ffi::AnyBuffer> out, NETC_ATTRS) {
  const auto e = a.element_type();
  if (b.element_type() != e || out->element_type() != e ||
      (e != ffi::DataType::F32 && e != ffi::DataType::BF16)) {
    return ffi::Error(ffi::ErrorCode::kInvalidArgument,
                      "netc's oneDNN convolution takes float32 or bfloat16 operands, all alike");
  }
  const auto type = e == ffi::DataType::F32 ? memory::data_type::f32 : memory::data_type::bf16;
  return Call(kind, Shape(a), Shape(b), Shape(*out), a.untyped_data(), b.untyped_data(),
              out->untyped_data(), nullptr, NETC_PASS, type);
}

// backward-weights and the bias gradient (Σ dy over all but the channels) in one primitive:
// x, dy and dw float32 or all bfloat16, the bias gradient float32 either way
ffi::Error WeightsAndBias(ffi::AnyBuffer x, ffi::AnyBuffer dy, ffi::Result<ffi::AnyBuffer> dw,
                          ffi::Result<ffi::AnyBuffer> db, NETC_ATTRS) {
  const auto e = x.element_type();
  if (dy.element_type() != e || dw->element_type() != e || db->element_type() != ffi::DataType::F32 ||
      (e != ffi::DataType::F32 && e != ffi::DataType::BF16)) {
    return ffi::Error(ffi::ErrorCode::kInvalidArgument,
                      "netc's oneDNN weight-and-bias gradient takes float32 or bfloat16 x, dy and "
                      "dw, all alike, and gives a float32 bias gradient");
  }
  const auto type = e == ffi::DataType::F32 ? memory::data_type::f32 : memory::data_type::bf16;
  return Call(kBackwardWeights, Shape(x), Shape(dy), Shape(*dw), x.untyped_data(),
              dy.untyped_data(), dw->untyped_data(), db->untyped_data(), NETC_PASS, type);
}

}  // namespace

// 1 when this CPU computes bfloat16 convolutions natively (AVX-512 BF16, AMX or AVX2-VNNI-2);
// elsewhere oneDNN would emulate or fall back to reference kernels, and netc keeps XLA's
// lowering for bfloat16 (compiler/kernels/onednn.py bf16_native).
extern "C" int NetcOnednnBf16Native() {
  const unsigned isa = static_cast<unsigned>(dnnl_get_effective_cpu_isa());
  auto has = [isa](unsigned want) { return (isa & want) == want; };
  return has(dnnl_cpu_isa_avx512_core_bf16) || has(dnnl_cpu_isa_avx2_vnni_2);
}

#define NETC_BIND                                                              \
  ffi::Ffi::Bind()                                                             \
      .Arg<ffi::AnyBuffer>()                                                   \
      .Arg<ffi::AnyBuffer>()                                                   \
      .Ret<ffi::AnyBuffer>()                                                   \
      .Attr<ffi::Span<const int64_t>>("strides")                               \
      .Attr<ffi::Span<const int64_t>>("dilation")                              \
      .Attr<ffi::Span<const int64_t>>("pad_lo")                                \
      .Attr<ffi::Span<const int64_t>>("pad_hi")                                \
      .Attr<int64_t>("groups")                                                 \
      .Attr<int64_t>("layout")

XLA_FFI_DEFINE_HANDLER_SYMBOL(NetcConvForward, Impl<kForward>, NETC_BIND);
XLA_FFI_DEFINE_HANDLER_SYMBOL(NetcConvBackwardData, Impl<kBackwardData>, NETC_BIND);
XLA_FFI_DEFINE_HANDLER_SYMBOL(NetcConvBackwardWeights, Impl<kBackwardWeights>, NETC_BIND);

XLA_FFI_DEFINE_HANDLER_SYMBOL(NetcConvBackwardWeightsBias, WeightsAndBias,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::AnyBuffer>()
                                  .Arg<ffi::AnyBuffer>()
                                  .Ret<ffi::AnyBuffer>()
                                  .Ret<ffi::AnyBuffer>()
                                  .Attr<ffi::Span<const int64_t>>("strides")
                                  .Attr<ffi::Span<const int64_t>>("dilation")
                                  .Attr<ffi::Span<const int64_t>>("pad_lo")
                                  .Attr<ffi::Span<const int64_t>>("pad_hi")
                                  .Attr<int64_t>("groups")
                                  .Attr<int64_t>("layout"));
