//! Node package writers (filled in by the package-builder work).
