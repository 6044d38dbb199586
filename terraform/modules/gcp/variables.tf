variable "site" {
  type        = string
  description = "The site's name, a DNS label (e.g. gcp-west). Names the trust domain <site>.strait and labels every resource."
  validation {
    condition     = can(regex("^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$", var.site))
    error_message = "site must be a DNS label: lowercase letters, digits and hyphens, at most 63 characters."
  }
}

variable "project" {
  type        = string
  description = "The Google Cloud project."
}

variable "region" {
  type        = string
  description = "The region (e.g. us-west1)."
}

variable "zones" {
  type        = list(string)
  description = "Zones of the region, at least 3: server i runs in zone i modulo their number."
  validation {
    condition     = length(var.zones) >= 3
    error_message = "give at least 3 zones, so that a zone's loss leaves a quorum."
  }
}

variable "network" {
  type        = string
  description = "The existing VPC network (self link)."
}

variable "subnetwork" {
  type        = string
  description = "The existing subnetwork (self link) in the region for servers, gateways and the internal load balancer."
}

variable "image" {
  type        = string
  description = "A boot image with /usr/local/bin/strait, gcloud and jq installed."
}

variable "server_count" {
  type        = number
  description = "Servers in the site's Raft group: 3 or 5."
  default     = 3
  validation {
    condition     = contains([3, 5], var.server_count)
    error_message = "server_count must be 3 or 5."
  }
}

variable "gateway_count" {
  type        = number
  description = "Gateways behind the external network load balancer (at least 2)."
  default     = 2
  validation {
    condition     = var.gateway_count >= 2
    error_message = "run at least 2 gateways: they fail over between each other."
  }
}

variable "server_machine_type" {
  type        = string
  description = "Machine type of servers."
  default     = "n2-standard-2"
}

variable "gateway_machine_type" {
  type        = string
  description = "Machine type of gateways (network-bound)."
  default     = "n2-highcpu-4"
}

variable "data_disk_size" {
  type        = number
  description = "Size in GB of each server's persistent data disk (Raft log, snapshots, identity, KEK)."
  default     = 50
}

variable "site_cidrs" {
  type        = list(string)
  description = "CIDRs inside the site allowed to reach the servers' API and DNS ports."
}

variable "peer_gateway_cidrs" {
  type        = list(string)
  description = "CIDRs of other sites' gateways: the only traffic from outside the site, and only to the gateway port."
  default     = []
}

variable "api_port" {
  type        = number
  description = "The servers' port for Raft and the API (mTLS)."
  default     = 7400
}

variable "bundle_port" {
  type        = number
  description = "The servers' SPIFFE bundle endpoint port (HTTPS)."
  default     = 7401
}

variable "gateway_port" {
  type        = number
  description = "The gateways' port, the only one open between sites."
  default     = 8443
}

variable "mesh_domain" {
  type        = string
  description = "The mesh DNS domain, forwarded to the servers by a Cloud DNS forwarding zone."
  default     = "mesh"
}

variable "virtual_ip_cidr" {
  type        = string
  description = "Where virtual IPs of imported services come from; route it to the gateways inside the site."
  default     = "240.0.0.0/16"
}

variable "dns_upstreams" {
  type        = list(string)
  description = "Resolvers (ip:port) for names outside the mesh domain; the metadata server's resolver by default."
  default     = ["169.254.169.254:53"]
}

variable "labels" {
  type        = map(string)
  description = "Labels added to every resource."
  default     = {}
}
