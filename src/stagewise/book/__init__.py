"""The book's boundary: what the chapters call.

The domain modules (:mod:`stagewise.sampling`, :mod:`stagewise.influence`, :mod:`stagewise.toy`,
:mod:`stagewise.lm`, …) compute and never touch a cache or a profile.  The modules of this
package wrap them for the chapters: they read the sizes of the chosen profile
(:mod:`stagewise.profiles`), the device (``$STAGEWISE_DEVICE``) and cache the expensive results
(:mod:`stagewise.cache`), so a rebuilt chapter reuses what it computed before.  A researcher
calling the library directly never writes to a cache behind their back.
"""
