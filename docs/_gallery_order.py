"""Order of the examples inside each gallery section, from basic to advanced (sphinx-gallery's
``within_subsection_order``); examples not listed come last, by file name."""

ORDER = [
    "demo_deq_ct.py",
    "demo_ei_training_ct.py",
    "demo_mri_robust_ei.py",
    "demo_equivariance_diagnostics.py",
    "demo_implicit_vs_jfb.py",
    "demo_custom_map.py",
    "demo_splitting_deq.py",
]


class ExampleOrder:
    """Sort key of an example file name."""

    def __init__(self, src_dir):
        self.src_dir = src_dir

    def __call__(self, filename: str):
        return (ORDER.index(filename), "") if filename in ORDER else (len(ORDER), filename)

    def __repr__(self) -> str:
        return f"<{type(self).__name__}>"
