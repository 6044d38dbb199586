terraform {
  required_version = ">= 1.5"
  required_providers {
    aws = {
      source  = "hashicorp/aws"
      version = ">= 5.0"
    }
  }
}

data "aws_region" "current" {}

data "aws_subnet" "server" {
  count = length(var.subnet_ids)
  id    = var.subnet_ids[count.index]
}

locals {
  trust_domain    = "${var.site}.strait"
  tags            = merge(var.tags, { "strait-site" = var.site })
  ssm_prefix      = "/strait/${var.site}"
  gateway_subnets = length(var.gateway_subnet_ids) > 0 ? var.gateway_subnet_ids : var.subnet_ids
  # Zone -> the gateways' address there.
  gateway_ips = {
    for i, s in data.aws_subnet.gateway : s.availability_zone =>
    var.internet_facing_gateways ? aws_eip.gateway[i].public_ip : cidrhost(s.cidr_block, var.lb_host_number)
  }
  # The internal load balancer's fixed address in each subnet: the API
  # and DNS address of the site.
  lb_ips     = [for s in data.aws_subnet.server : cidrhost(s.cidr_block, var.lb_host_number)]
  retry_join = "provider=aws region=${data.aws_region.current.name} tag_key=strait-site tag_value=${var.site} port=${var.api_port}"

  strait_config = templatefile("${path.module}/templates/strait.yaml.tftpl", {
    site               = var.site
    api_port           = var.api_port
    bundle_port        = var.bundle_port
    mesh_domain        = var.mesh_domain
    dns_upstreams      = var.dns_upstreams
    virtual_ip_cidr    = var.virtual_ip_cidr
    region             = data.aws_region.current.name
    kms_key_id         = aws_kms_key.kek.arn
    bundle_bucket      = var.publish_bundle ? aws_s3_bucket.bundle[0].bucket : ""
    cloudmap_namespace = var.cloudmap_namespace
  })
}

# --- KMS: the key that wraps each server's KEK envelope -------------------

resource "aws_kms_key" "kek" {
  description         = "Strait site ${var.site}: wraps the CA key-encryption key"
  enable_key_rotation = true
  tags                = local.tags
}

resource "aws_kms_alias" "kek" {
  name          = "alias/strait-${var.site}"
  target_key_id = aws_kms_key.kek.key_id
}

# --- Identity: what servers and gateways may do ----------------------------

data "aws_iam_policy_document" "assume" {
  statement {
    actions = ["sts:AssumeRole"]
    principals {
      type        = "Service"
      identifiers = ["ec2.amazonaws.com"]
    }
  }
}

resource "aws_iam_role" "server" {
  name_prefix        = "strait-${var.site}-server-"
  assume_role_policy = data.aws_iam_policy_document.assume.json
  tags               = local.tags
}

data "aws_iam_policy_document" "server" {
  statement {
    sid       = "AutoJoin"
    actions   = ["ec2:DescribeInstances", "ec2:DescribeVolumes"]
    resources = ["*"]
  }
  statement {
    sid       = "DataVolume"
    actions   = ["ec2:AttachVolume"]
    resources = ["*"]
    condition {
      test     = "StringEquals"
      variable = "aws:ResourceTag/strait-site"
      values   = [var.site]
    }
  }
  statement {
    sid       = "KEK"
    actions   = ["kms:GenerateDataKey", "kms:Decrypt"]
    resources = [aws_kms_key.kek.arn]
    condition {
      test     = "StringEquals"
      variable = "kms:EncryptionContext:strait:site"
      values   = [var.site]
    }
  }
  statement {
    sid       = "BootstrapSecrets"
    actions   = ["ssm:GetParameter", "ssm:PutParameter"]
    resources = ["arn:aws:ssm:${data.aws_region.current.name}:*:parameter${local.ssm_prefix}/*"]
  }
  dynamic "statement" {
    for_each = var.publish_bundle ? [1] : []
    content {
      sid       = "BundlePublishing"
      actions   = ["s3:PutObject"]
      resources = ["${aws_s3_bucket.bundle[0].arn}/*"]
    }
  }
  dynamic "statement" {
    for_each = var.cloudmap_namespace != "" ? [1] : []
    content {
      sid = "CloudMap"
      actions = ["servicediscovery:ListNamespaces", "servicediscovery:ListServices", "servicediscovery:ListInstances",
        "servicediscovery:DiscoverInstances", "servicediscovery:CreateService", "servicediscovery:RegisterInstance",
      "servicediscovery:DeregisterInstance"]
      resources = ["*"]
    }
  }
}

resource "aws_iam_role_policy" "server" {
  role   = aws_iam_role.server.id
  policy = data.aws_iam_policy_document.server.json
}

resource "aws_iam_instance_profile" "server" {
  name_prefix = "strait-${var.site}-server-"
  role        = aws_iam_role.server.name
}

resource "aws_iam_role" "gateway" {
  name_prefix        = "strait-${var.site}-gateway-"
  assume_role_policy = data.aws_iam_policy_document.assume.json
  tags               = local.tags
}

data "aws_iam_policy_document" "gateway" {
  statement {
    sid       = "FindServers"
    actions   = ["ec2:DescribeInstances"]
    resources = ["*"]
  }
  statement {
    sid       = "GatewayToken"
    actions   = ["ssm:GetParameter"]
    resources = ["arn:aws:ssm:${data.aws_region.current.name}:*:parameter${local.ssm_prefix}/gateway-token"]
  }
}

resource "aws_iam_role_policy" "gateway" {
  role   = aws_iam_role.gateway.id
  policy = data.aws_iam_policy_document.gateway.json
}

resource "aws_iam_instance_profile" "gateway" {
  name_prefix = "strait-${var.site}-gateway-"
  role        = aws_iam_role.gateway.name
}

# --- Firewall: only the gateway port from other sites ----------------------

resource "aws_security_group" "server" {
  name_prefix = "strait-${var.site}-server-"
  description = "Strait servers: API and DNS from inside the site, Raft between servers"
  vpc_id      = var.vpc_id
  tags        = local.tags
}

resource "aws_vpc_security_group_ingress_rule" "server_api" {
  for_each          = toset(var.site_cidrs)
  security_group_id = aws_security_group.server.id
  description       = "API (mTLS) from inside the site"
  cidr_ipv4         = each.value
  ip_protocol       = "tcp"
  from_port         = var.api_port
  to_port           = var.api_port
}

resource "aws_vpc_security_group_ingress_rule" "server_dns" {
  for_each          = { for pair in setproduct(var.site_cidrs, ["tcp", "udp"]) : "${pair[0]}-${pair[1]}" => pair }
  security_group_id = aws_security_group.server.id
  description       = "mesh DNS from inside the site"
  cidr_ipv4         = each.value[0]
  ip_protocol       = each.value[1]
  from_port         = 53
  to_port           = 53
}

resource "aws_vpc_security_group_ingress_rule" "server_bundle" {
  for_each          = toset(var.site_cidrs)
  security_group_id = aws_security_group.server.id
  description       = "SPIFFE bundle endpoint from inside the site"
  cidr_ipv4         = each.value
  ip_protocol       = "tcp"
  from_port         = var.bundle_port
  to_port           = var.bundle_port
}

resource "aws_vpc_security_group_ingress_rule" "server_from_gateways" {
  security_group_id            = aws_security_group.server.id
  description                  = "peers' control traffic passed through by the gateways"
  referenced_security_group_id = aws_security_group.gateway.id
  ip_protocol                  = "tcp"
  from_port                    = var.api_port
  to_port                      = var.bundle_port
}

resource "aws_vpc_security_group_egress_rule" "server_all" {
  security_group_id = aws_security_group.server.id
  description       = "AWS APIs, servers, instances"
  cidr_ipv4         = "0.0.0.0/0"
  ip_protocol       = "-1"
}

resource "aws_security_group" "gateway" {
  name_prefix = "strait-${var.site}-gateway-"
  description = "Strait gateways: the gateway port from peers' gateways, virtual IPs from inside the site"
  vpc_id      = var.vpc_id
  tags        = local.tags
}

resource "aws_vpc_security_group_ingress_rule" "gateway_peers" {
  for_each          = toset(var.peer_gateway_cidrs)
  security_group_id = aws_security_group.gateway.id
  description       = "the gateway port, from other sites' gateways only"
  cidr_ipv4         = each.value
  ip_protocol       = "tcp"
  from_port         = var.gateway_port
  to_port           = var.gateway_port
}

resource "aws_vpc_security_group_ingress_rule" "gateway_site" {
  for_each          = toset(var.site_cidrs)
  security_group_id = aws_security_group.gateway.id
  description       = "egress to imported services (virtual IPs) and the NLB health checks, from inside the site"
  cidr_ipv4         = each.value
  ip_protocol       = "tcp"
  from_port         = 1
  to_port           = 65535
}

resource "aws_vpc_security_group_egress_rule" "gateway_all" {
  security_group_id = aws_security_group.gateway.id
  description       = "peers' gateways, local instances, servers"
  cidr_ipv4         = "0.0.0.0/0"
  ip_protocol       = "-1"
}

# --- Servers: one auto-healing group per slot, each with its data volume ---

resource "aws_ebs_volume" "data" {
  count             = var.server_count
  availability_zone = data.aws_subnet.server[count.index % length(var.subnet_ids)].availability_zone
  size              = var.data_volume_size
  type              = "gp3"
  encrypted         = true
  tags              = merge(local.tags, { "strait-slot" = tostring(count.index), "Name" = "strait-${var.site}-data-${count.index}" })
}

resource "aws_launch_template" "server" {
  count         = var.server_count
  name_prefix   = "strait-${var.site}-server-${count.index}-"
  image_id      = var.image_id
  instance_type = var.server_instance_type
  iam_instance_profile {
    arn = aws_iam_instance_profile.server.arn
  }
  vpc_security_group_ids = [aws_security_group.server.id]
  metadata_options {
    http_tokens = "required"
  }
  user_data = base64encode(templatefile("${path.module}/templates/server-boot.sh.tftpl", {
    site          = var.site
    slot          = count.index
    volume_id     = aws_ebs_volume.data[count.index].id
    region        = data.aws_region.current.name
    ssm_prefix    = local.ssm_prefix
    retry_join    = local.retry_join
    api_port      = var.api_port
    strait_config = local.strait_config
    server_count  = var.server_count
    gateway_count = var.gateway_count
  }))
  tag_specifications {
    resource_type = "instance"
    tags          = merge(local.tags, { "strait-role" = "server", "strait-slot" = tostring(count.index), "Name" = "strait-${var.site}-server-${count.index}" })
  }
}

resource "aws_autoscaling_group" "server" {
  count                     = var.server_count
  name_prefix               = "strait-${var.site}-server-${count.index}-"
  min_size                  = 1
  max_size                  = 1
  desired_capacity          = 1
  vpc_zone_identifier       = [var.subnet_ids[count.index % length(var.subnet_ids)]]
  health_check_type         = "ELB"
  health_check_grace_period = 300
  target_group_arns         = [aws_lb_target_group.api.arn, aws_lb_target_group.dns_udp.arn, aws_lb_target_group.dns_tcp.arn]
  launch_template {
    id      = aws_launch_template.server[count.index].id
    version = "$Latest"
  }
  dynamic "tag" {
    for_each = local.tags
    content {
      key                 = tag.key
      value               = tag.value
      propagate_at_launch = true
    }
  }
}

# --- The site's internal address: API and DNS behind one NLB ---------------

resource "aws_lb" "internal" {
  name_prefix        = "strait"
  internal           = true
  load_balancer_type = "network"
  dynamic "subnet_mapping" {
    for_each = data.aws_subnet.server
    content {
      subnet_id            = subnet_mapping.value.id
      private_ipv4_address = local.lb_ips[subnet_mapping.key]
    }
  }
  tags = local.tags
}

resource "aws_lb_target_group" "api" {
  name_prefix = "sapi-"
  port        = var.api_port
  protocol    = "TCP"
  vpc_id      = var.vpc_id
  health_check {
    protocol = "TCP"
  }
}

resource "aws_lb_target_group" "dns_udp" {
  name_prefix = "sdnu-"
  port        = 53
  protocol    = "UDP"
  vpc_id      = var.vpc_id
  health_check {
    protocol = "TCP"
    port     = var.api_port
  }
}

resource "aws_lb_target_group" "dns_tcp" {
  name_prefix = "sdnt-"
  port        = 53
  protocol    = "TCP"
  vpc_id      = var.vpc_id
  health_check {
    protocol = "TCP"
    port     = var.api_port
  }
}

resource "aws_lb_listener" "api" {
  load_balancer_arn = aws_lb.internal.arn
  port              = var.api_port
  protocol          = "TCP"
  default_action {
    type             = "forward"
    target_group_arn = aws_lb_target_group.api.arn
  }
}

resource "aws_lb_listener" "dns_udp" {
  load_balancer_arn = aws_lb.internal.arn
  port              = 53
  protocol          = "UDP"
  default_action {
    type             = "forward"
    target_group_arn = aws_lb_target_group.dns_udp.arn
  }
}

resource "aws_lb_listener" "dns_tcp" {
  load_balancer_arn = aws_lb.internal.arn
  port              = 53
  protocol          = "TCP"
  default_action {
    type             = "forward"
    target_group_arn = aws_lb_target_group.dns_tcp.arn
  }
}

# --- Gateways: an auto-healing group behind a network load balancer --------

resource "aws_launch_template" "gateway" {
  name_prefix   = "strait-${var.site}-gateway-"
  image_id      = var.image_id
  instance_type = var.gateway_instance_type
  iam_instance_profile {
    arn = aws_iam_instance_profile.gateway.arn
  }
  vpc_security_group_ids = [aws_security_group.gateway.id]
  metadata_options {
    http_tokens = "required"
  }
  user_data = base64encode(templatefile("${path.module}/templates/gateway-boot.sh.tftpl", {
    site            = var.site
    region          = data.aws_region.current.name
    ssm_prefix      = local.ssm_prefix
    retry_join      = local.retry_join
    gateway_port    = var.gateway_port
    virtual_ip_cidr = var.virtual_ip_cidr
    gateway_ips     = jsonencode(local.gateway_ips)
  }))
  tag_specifications {
    resource_type = "instance"
    tags          = merge(local.tags, { "strait-role" = "gateway", "Name" = "strait-${var.site}-gateway" })
  }
}

resource "aws_autoscaling_group" "gateway" {
  name_prefix               = "strait-${var.site}-gateway-"
  min_size                  = var.gateway_count
  max_size                  = var.gateway_count
  desired_capacity          = var.gateway_count
  vpc_zone_identifier       = var.subnet_ids
  health_check_type         = "ELB"
  health_check_grace_period = 300
  target_group_arns         = [aws_lb_target_group.gateway.arn]
  launch_template {
    id      = aws_launch_template.gateway.id
    version = "$Latest"
  }
  # Gateways drain on SIGTERM; give them the time to.
  wait_for_capacity_timeout = "10m"
  dynamic "tag" {
    for_each = merge(local.tags, { "strait-role" = "gateway" })
    content {
      key                 = tag.key
      value               = tag.value
      propagate_at_launch = true
    }
  }
}

data "aws_subnet" "gateway" {
  count = length(local.gateway_subnets)
  id    = local.gateway_subnets[count.index]
}

# A fixed address per zone (an Elastic IP, or a private address for an
# internal load balancer): gateways register their zone's address, which
# is what peers dial.
resource "aws_eip" "gateway" {
  count  = var.internet_facing_gateways ? length(local.gateway_subnets) : 0
  domain = "vpc"
  tags   = merge(local.tags, { "Name" = "strait-${var.site}-gateway-${count.index}" })
}

resource "aws_lb" "gateway" {
  name_prefix                      = "sgw"
  internal                         = !var.internet_facing_gateways
  load_balancer_type               = "network"
  enable_cross_zone_load_balancing = true
  dynamic "subnet_mapping" {
    for_each = data.aws_subnet.gateway
    content {
      subnet_id            = subnet_mapping.value.id
      allocation_id        = var.internet_facing_gateways ? aws_eip.gateway[subnet_mapping.key].id : null
      private_ipv4_address = var.internet_facing_gateways ? null : cidrhost(subnet_mapping.value.cidr_block, var.lb_host_number)
    }
  }
  tags = local.tags
}

resource "aws_lb_target_group" "gateway" {
  name_prefix          = "sgw-"
  port                 = var.gateway_port
  protocol             = "TCP"
  vpc_id               = var.vpc_id
  deregistration_delay = 30
  health_check {
    protocol = "TCP"
  }
}

resource "aws_lb_listener" "gateway" {
  load_balancer_arn = aws_lb.gateway.arn
  port              = var.gateway_port
  protocol          = "TCP"
  default_action {
    type             = "forward"
    target_group_arn = aws_lb_target_group.gateway.arn
  }
}

# --- DNS: the mesh domain forwarded to the servers -------------------------

resource "aws_security_group" "resolver" {
  count       = length(var.resolver_endpoint_security_group_ids) == 0 ? 1 : 0
  name_prefix = "strait-${var.site}-resolver-"
  description = "Route 53 Resolver outbound endpoint for the mesh domain"
  vpc_id      = var.vpc_id
  tags        = local.tags
}

resource "aws_vpc_security_group_egress_rule" "resolver_dns" {
  for_each          = length(var.resolver_endpoint_security_group_ids) == 0 ? toset(["tcp", "udp"]) : toset([])
  security_group_id = aws_security_group.resolver[0].id
  description       = "DNS to the site's servers"
  cidr_ipv4         = "0.0.0.0/0"
  ip_protocol       = each.value
  from_port         = 53
  to_port           = 53
}

resource "aws_route53_resolver_endpoint" "mesh" {
  name               = "strait-${var.site}"
  direction          = "OUTBOUND"
  security_group_ids = length(var.resolver_endpoint_security_group_ids) > 0 ? var.resolver_endpoint_security_group_ids : [aws_security_group.resolver[0].id]
  dynamic "ip_address" {
    for_each = slice(var.subnet_ids, 0, 2)
    content {
      subnet_id = ip_address.value
    }
  }
  tags = local.tags
}

resource "aws_route53_resolver_rule" "mesh" {
  name                 = "strait-${var.site}-mesh"
  domain_name          = var.mesh_domain
  rule_type            = "FORWARD"
  resolver_endpoint_id = aws_route53_resolver_endpoint.mesh.id
  dynamic "target_ip" {
    for_each = local.lb_ips
    content {
      ip   = target_ip.value
      port = 53
    }
  }
  tags = local.tags
}

resource "aws_route53_resolver_rule_association" "mesh" {
  resolver_rule_id = aws_route53_resolver_rule.mesh.id
  vpc_id           = var.vpc_id
}

# --- Optional: the trust bundle on S3 --------------------------------------

resource "aws_s3_bucket" "bundle" {
  count         = var.publish_bundle ? 1 : 0
  bucket_prefix = "strait-${var.site}-bundle-"
  tags          = local.tags
}
