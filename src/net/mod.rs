//! Safe helpers around the kernel's control plane: rtnetlink and network namespaces.
