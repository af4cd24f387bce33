"""khugepaged and MADV_COLLAPSE, after mm/khugepaged.c with the v19 mTHP series
(and v5 for comparison); kernel-mthp.md is the reference.

One concept per module: ``results`` (enum scan_result as one table), ``knobs``
(sysfs knobs and step costs, from data files), ``pte_info`` (what the scan sees of a
PMD range), ``collapse`` (collapse_control and collapse_huge_page's steps), ``scan``
(collapse_scan_pmd and the order walks), ``madvise_collapse``, ``daemon`` (the
kthread).  Every function takes the emu.kernel.Kernel it works on as ``k``.
"""
