# Evaluation harness: FROZEN (DO NOT CHANGE).
# The compute count both phases keep inside a seed's child (protocol 2, see runtime.py beside it):
# examples through the model with gradients on and off, at module calls and at the torch function
# level, and gradient computations (autograd's engine, forward-mode levels). The trusted side holds
# them against the budget (sandbox/trial.py). They are counted in the candidate's own process, so
# they are tripwires for code that means to get past them; SECURITY.md says what stays open.


# Torch functions through which a tensor of weights meets a batch of inputs of as many dimensions
# (broadcasting alone cannot tell the batch apart there): linear maps, convolutions, look-ups.
LAYER_FUNCTIONS = frozenset({
    "linear", "bilinear", "matmul", "__matmul__", "__rmatmul__", "mm", "bmm", "addmm", "addbmm", "baddbmm",
    "addmv", "mv", "einsum", "tensordot", "inner", "chain_matmul", "multi_dot", "conv1d", "conv2d", "conv3d",
    "conv_transpose1d", "conv_transpose2d", "conv_transpose3d", "convolution", "embedding", "embedding_bag",
})
# Functions where weights written first multiply inputs laid out [features, batch] (W @ x.T).
LEFT_MULTIPLY = frozenset({"matmul", "__matmul__", "mm", "mv", "addmm"})


class ComputeMeter:
    """Counts what passes through models: examples in top-level forward passes through modules
    that hold parameters (a loss module or a parameterless wrapper is transparent; nested calls
    are part of the outer pass), split by whether gradients were on; backward passes; optimizer
    steps. ``on_first_training_forward`` runs once, at the first forward with gradients on.

    Training does not need a module call: ``F.linear(x, model[0].weight)`` in a loop of its own
    trains the same weights past every module hook. So the same examples are also counted where
    any spelling must pass, at the torch function level (a TorchFunctionMode): every call in
    which weights (a parameter, a leaf that requires gradients, or a tensor computed from one
    alone: ``W.t()``, ``W.detach()``, ``W[:, :k]``, ``p.data``) meet a batch of inputs (a layer
    function as above, or a batch broadcast over the weights) adds the batch's rows to those
    weights' count. A model call counts its batch, or the rows its busiest weights saw during the
    call where that is more (a forward that also runs a stored batch of its own); calls outside
    any model call add their busiest weights' rows on top. For code that calls its model the two
    agree (each weight sees each batch once per pass). A weight used twice in one pass (a
    hand-written recurrence, tied input and output weights) counts twice: the budget reads it as
    more compute, which it is.
    What stays out of reach of any in-process count: weights copied out of torch (``.numpy()``)
    and trained by hand. The phase's wall-clock limit bounds that; SECURITY.md says so."""

    def __init__(self, on_first_training_forward=None):
        self.train_examples = 0
        self.other_examples = 0
        self.forward_passes = 0
        self.backward_passes = 0
        self.optimizer_steps = 0
        self.forbid_gradients = False
        self.example_shape: tuple = ()  # one input example's shape (the harness sets it): see examples_in
        self._depth = 0
        self._first = on_first_training_forward
        # Rows the function-level count saw, per weights' key, (gradients off, gradients on): outside
        # any model call over the whole phase, and inside the model call now running.
        self._outside_rows = ({}, {})
        self._pass_rows = ({}, {})
        self._pass = (0, False)  # the running model call: its batch and whether gradients were on
        self._mode = None

    def install(self) -> None:
        import torch
        from torch.autograd import variable as _variable
        from torch.nn.modules import module as _module
        from torch.optim import optimizer as _optimizer

        meter = self

        def holds_parameters(mod) -> bool:
            return next(mod.parameters(), None) is not None

        def batch_of(args, kwargs) -> int:
            for value in list(args) + list((kwargs or {}).values()):
                if isinstance(value, (list, tuple)) and value:
                    value = value[0]
                if isinstance(value, torch.Tensor):
                    return meter.examples_in(value) if value.dim() > 0 else 1
            return 1

        def pre(mod, args, kwargs):
            if not holds_parameters(mod):
                return None
            if meter._depth == 0:
                n = batch_of(args, kwargs)
                meter.forward_passes += 1
                if torch.is_grad_enabled():
                    if meter.forbid_gradients:
                        raise RuntimeError("harness: the predict phase runs inference only (gradients are off)")
                    if meter._first is not None:
                        first, meter._first = meter._first, None
                        first()
                meter._pass = (n, torch.is_grad_enabled())
                meter._pass_rows = ({}, {})
            meter._depth += 1
            return None

        def post(mod, args, kwargs, output):
            if holds_parameters(mod):
                meter._depth = max(0, meter._depth - 1)
                if meter._depth == 0:
                    meter._end_pass()
            return None

        _module.register_module_forward_pre_hook(lambda m, a: pre(m, a, None))
        _module.register_module_forward_hook(lambda m, a, o: post(m, a, None, o), always_call=True)
        _optimizer.register_optimizer_step_post_hook(lambda opt, a, k: meter._step())

        engine = _variable.Variable._execution_engine

        # Every call counts, a backward started inside another one's hooks included (a hook can run
        # whole training steps); reentrant checkpointing's inner backward counts too.
        class CountingEngine:
            def run_backward(self, *args, **kwargs):
                if meter.forbid_gradients:
                    raise RuntimeError("harness: the predict phase runs inference only (no backward passes)")
                meter.backward_passes += 1
                return engine.run_backward(*args, **kwargs)

            def __getattr__(self, name):
                return getattr(engine, name)

        _variable.Variable._execution_engine = CountingEngine()
        _count_forward_gradients(self)
        self._mode = _op_meter_mode(self)
        self._mode.__enter__()
        _count_in_new_threads(self._mode)

    def stop(self) -> bool:
        """Stop counting (the harness's own code follows). False, with the harness's log line, when
        candidate code took the function-level count off torch's mode stack: its counts cannot be
        trusted then."""
        import sys

        import torch

        mode, self._mode = self._mode, None
        if mode is None:
            return True
        mode.counting = False
        if any(torch._C._get_function_stack_at(i) is mode for i in range(torch._C._len_torch_function_stack())):
            return True
        print("harness: candidate code took the harness's compute count off torch's function-mode stack",
              file=sys.stderr)
        return False

    def examples_in(self, t) -> int:
        """Examples in a batch: its leading dimension, or, for input examples laid out otherwise
        (``x.unsqueeze(0)``, ``x.view(4, 25, 64)``: the example's shape trailing, the batch spread
        over the dimensions before it), as many as its size holds."""
        shape, example = tuple(t.shape), self.example_shape
        if example and len(shape) > len(example) and shape[1:] != example and shape[-len(example):] == example:
            size = 1
            for d in example:
                size *= int(d)
            return int(t.numel()) // max(1, size)
        return int(shape[0])

    def _count_rows(self, key, rows: int, grad: bool) -> None:
        table = (self._pass_rows if self._depth > 0 else self._outside_rows)[grad]
        table[key] = table.get(key, 0) + rows

    def _end_pass(self) -> None:
        """A model call ended: it counts its batch, or more where its weights saw more rows."""
        n, grad = self._pass
        busiest_on = max(self._pass_rows[True].values(), default=0)
        busiest_off = max(self._pass_rows[False].values(), default=0)
        if grad:  # a training call: what ran with gradients off inside it (a custom autograd Function's
            # forward, a compiled graph) is part of that training
            self.train_examples += max(n, busiest_on, busiest_off)
        else:
            self.train_examples += busiest_on
            self.other_examples += max(n, busiest_off)
        self._pass_rows = ({}, {})

    def _step(self) -> None:
        if self.forbid_gradients:
            raise RuntimeError("harness: the predict phase runs inference only (no optimizer steps)")
        self.optimizer_steps += 1

    def as_dict(self) -> dict:
        outside_off = max(self._outside_rows[False].values(), default=0)
        outside_on = max(self._outside_rows[True].values(), default=0)
        return {"train_examples": self.train_examples + outside_on,
                "other_examples": self.other_examples + outside_off,
                "forward_passes": self.forward_passes, "backward_passes": self.backward_passes,
                "optimizer_steps": self.optimizer_steps}


def _count_forward_gradients(meter: ComputeMeter) -> None:
    """Forward-mode gradients (torch.func.jvp / jacfwd / linearize, torch.autograd.forward_ad) never
    reach autograd's engine: each dual level they enter counts as a gradient computation too, and
    the predict phase refuses them as it refuses backward passes."""
    from torch._functorch import predispatch

    def counted(enter):
        def enter_counted(*args, **kwargs):
            if meter.forbid_gradients:
                raise RuntimeError("harness: the predict phase runs inference only (no forward-mode gradients)")
            meter.backward_passes += 1
            return enter(*args, **kwargs)

        return enter_counted

    # torch.autograd.forward_ad.dual_level imports this at each entry; torch.func.jvp (and jacfwd,
    # linearize, built on it) enters such a level too.
    predispatch._enter_dual_level = counted(predispatch._enter_dual_level)


def _count_in_new_threads(mode) -> None:
    """torch's function-mode stack is per thread: a thread started from here on (threading, a
    thread pool, _thread itself) runs its target under ``mode`` too."""
    import _thread
    import threading

    def wrap(start):
        def start_under_meter(function, *args, **kwargs):
            def run(*a, **k):
                if mode.counting:
                    mode.__enter__()
                return function(*a, **k)

            return start(run, *args, **kwargs)

        return start_under_meter

    for owner, name in ((_thread, "start_new_thread"), (_thread, "start_new"), (_thread, "start_joinable_thread"),
                        (threading, "_start_new_thread"), (threading, "_start_joinable_thread")):
        if hasattr(owner, name):
            setattr(owner, name, wrap(getattr(owner, name)))


def _op_meter_mode(meter: ComputeMeter):
    """The TorchFunctionMode behind ComputeMeter's function-level count (see its docstring)."""
    import torch
    from torch.overrides import TorchFunctionMode

    parameter = torch.nn.Parameter
    tensor_type = torch.Tensor

    def weights_key(t):
        """The count key of a tensor of weights, or None for anything else. A weight is known by
        its origin (the parameter it came from), where it starts in its storage and its size, so
        that W, W.t() and W.detach() share one count and the slices of one weight do not."""
        root = t.__dict__.get("_meter_root") if type(t) is tensor_type else None
        if root is None:
            if not (isinstance(t, parameter) or (t.requires_grad and t.is_leaf)):
                return None
            root = id(t)
        return root, t.storage_offset() if t.layout == torch.strided else 0, t.numel()

    def tensors_of(args, kwargs):
        for value in list(args) + list(kwargs.values()):
            if isinstance(value, tensor_type):
                yield value
            elif isinstance(value, (list, tuple)):
                for item in value:
                    if isinstance(item, tensor_type):
                        yield item

    def mark(out, root):
        if isinstance(out, (list, tuple)):
            for item in out:
                mark(item, root)
        elif type(out) is tensor_type and "_meter_root" not in out.__dict__ and not (out.requires_grad and out.is_leaf):
            out.__dict__["_meter_root"] = root

    is_compiling = torch.compiler.is_compiling

    class OpMeter(TorchFunctionMode):
        counting = True

        def __torch_function__(self, func, types, args=(), kwargs=None):
            kwargs = kwargs or {}
            if is_compiling():  # torch.compile traces this method: the compiled graph gets the call alone
                return func(*args, **kwargs)
            out = func(*args, **kwargs)
            if not self.counting:
                return out
            try:
                see(getattr(func, "__name__", ""), args, kwargs, out)
            except Exception:  # counting must never break the code it counts
                pass
            return out

    def see(name, args, kwargs, out):
        weights, data, data_first = [], None, False
        for t in tensors_of(args, kwargs):
            key = weights_key(t)
            if key is not None:
                weights.append((key, t))
            elif data is None and t.dim() >= 1:
                data, data_first = t, not weights
        if not weights:
            return
        if data is None:  # computed from weights alone: still weights (W.t(), 0.5 * W, p.grad)
            mark(out, weights[0][0][0])
            return
        # Outside a model call the data is the input batch, maybe laid out otherwise; inside one it is
        # the model's own activations, batch first (examples_in could misread them).
        batch = meter.examples_in if meter._depth == 0 else (lambda t: int(t.shape[0]))
        if name in LAYER_FUNCTIONS:
            left = name in LEFT_MULTIPLY and not data_first and data.dim() == 2
            rows = int(data.shape[1]) if left else batch(data)
        elif any(data.dim() > t.dim() or data.numel() > t.numel() for _key, t in weights):
            rows = batch(data)  # a batch broadcast over the weights
        else:  # weights modified by something of their own shape (noise, a mask): still weights
            if any(tuple(data.shape) == tuple(t.shape) for _key, t in weights):
                mark(out, weights[0][0][0])
            return
        grad = torch.is_grad_enabled()
        for key in {key for key, _t in weights}:
            meter._count_rows(key, rows, grad)

    return OpMeter()
