//! CustomResourceDefinitions generated from the API types (`diskplane crds`).
